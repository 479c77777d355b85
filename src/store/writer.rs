//! SQLite's one writing connection, held by the store instead of a pool.
//!
//! Writes to an SQLite file go through one connection (see `Store::connect`). sqlx's pool of one
//! connection did that too, but a pool checks a connection in and out around every statement
//! that is not in a transaction, and pings it (a hop to the connection's thread and back) every
//! time it comes back, and the next statement waits for that ping. Holding the connection behind
//! an async lock instead: one statement, one hop.
//!
//! [`SqliteWriter`] is an [`Executor`] by shared reference, like `&Pool`, so the queries written
//! once for both backends (`with_pool!`) run on it unchanged; `acquire` gives the connection
//! itself, for transactions ([`BeginTx`]) and for statements run back to back. What a pool
//! gave stays: waiting for the connection times out ([`ACQUIRE_TIMEOUT`], then
//! `PoolTimedOut`), `close` fails every waiting statement with `PoolClosed`, and a connection
//! whose thread is gone (sqlx's `WorkerCrashed`, seen by a statement or a `BEGIN` through this
//! module) is opened again for the next statement (an in-memory database is not: a new one
//! would be empty).
//!
//! A future dropped while it holds the connection leaves it as sqlx leaves a connection: a
//! write it started completes, and a transaction it did not commit is rolled back before the
//! connection's next statement. [`SqliteWriter::fetch_script`] runs several statements that open
//! and commit their own transaction in one hop; one dropped before it got to its `COMMIT` is
//! rolled back in the same way. Rows are read whole while the connection is held (a stream
//! that borrowed the lock could not be returned): every query of the store reads them all
//! anyway.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt as _, TryStreamExt as _, future::BoxFuture, stream::BoxStream};
use sqlx::{
    ConnectOptions as _, Either, Error, Execute, Executor, Sqlite, SqliteConnection, Transaction,
    sqlite::{SqliteConnectOptions, SqliteQueryResult, SqliteRow, SqliteStatement, SqliteTypeInfo},
};
use tokio::sync::{Mutex, MutexGuard};

/// How long a statement waits for the connection before it fails with `PoolTimedOut` (sqlx's
/// default for a pool).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// See the module documentation. Cheap to clone: every clone is the same connection.
#[derive(Clone, Debug)]
pub(crate) struct SqliteWriter(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// The connection; `None` once closed, or lost and not opened again yet.
    conn: Mutex<Option<SqliteConnection>>,
    /// A statement found the connection's thread gone.
    lost: AtomicBool,
    /// A script ([`SqliteWriter::fetch_script`]) was sent and did not end: its transaction may
    /// be open, and is rolled back before the next statement.
    script_open: AtomicBool,
    /// `close` was called.
    closed: AtomicBool,
    /// To open the connection again after its thread is gone.
    options: SqliteConnectOptions,
    /// Whether a lost connection is opened again (not for an in-memory database).
    reopen: bool,
    /// [`ACQUIRE_TIMEOUT`], shorter in tests.
    acquire_timeout: Duration,
}

/// The writing connection, held until dropped.
#[derive(Debug)]
pub(crate) struct WriterConn<'a> {
    conn: MutexGuard<'a, Option<SqliteConnection>>,
    lost: &'a AtomicBool,
}

/// Rolls back the transaction a script may have left open; finding none is fine.
async fn rollback_script(conn: &mut WriterConn<'_>) -> Result<(), Error> {
    match (&mut **conn).execute("ROLLBACK").await {
        Err(Error::Database(e)) if e.message().contains("no transaction is active") => Ok(()),
        result => conn.check(result).map(drop),
    }
}

/// Notes a connection whose thread is gone, for the next `acquire` to replace.
fn note(lost: &AtomicBool, result: &Result<impl Sized, Error>) {
    if matches!(result, Err(Error::WorkerCrashed)) && !lost.swap(true, Ordering::SeqCst) {
        tracing::error!("the SQLite writer's thread is gone; the next write opens it again");
    }
}

impl WriterConn<'_> {
    /// Passes `result` through, noting a connection whose thread is gone.
    fn check<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        note(self.lost, &result);
        result
    }
}

impl std::ops::Deref for WriterConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.conn.as_ref().expect("only an open writer is handed out")
    }
}

impl std::ops::DerefMut for WriterConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("only an open writer is handed out")
    }
}

/// A connection a transaction begins on, for queries written once for both backends: sqlx's
/// pooled PostgreSQL connection, or SQLite's held writer (whose `BEGIN` notes a lost thread).
pub(crate) trait BeginTx {
    /// The backend.
    type Db: sqlx::Database;

    /// Begins a transaction on this connection.
    fn begin_tx(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Transaction<'_, Self::Db>, Error>> + Send;
}

impl BeginTx for sqlx::pool::PoolConnection<sqlx::Postgres> {
    type Db = sqlx::Postgres;

    fn begin_tx(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Transaction<'_, sqlx::Postgres>, Error>> + Send
    {
        sqlx::Connection::begin(&mut **self)
    }
}

impl BeginTx for WriterConn<'_> {
    type Db = Sqlite;

    fn begin_tx(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Transaction<'_, Sqlite>, Error>> + Send {
        let lost = self.lost;
        async move {
            let result = sqlx::Connection::begin(&mut **self).await;
            note(lost, &result);
            result
        }
    }
}

impl SqliteWriter {
    /// Opens the writing connection; `reopen`: whether to open it again if its thread is found
    /// gone (not for an in-memory database).
    ///
    /// # Errors
    /// When SQLite cannot open the database.
    pub(crate) async fn connect(
        options: SqliteConnectOptions,
        reopen: bool,
    ) -> Result<Self, Error> {
        Self::connect_waiting(options, reopen, ACQUIRE_TIMEOUT).await
    }

    async fn connect_waiting(
        options: SqliteConnectOptions,
        reopen: bool,
        acquire_timeout: Duration,
    ) -> Result<Self, Error> {
        let conn = options.connect().await?;
        Ok(Self(Arc::new(Inner {
            conn: Mutex::new(Some(conn)),
            lost: AtomicBool::new(false),
            script_open: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            options,
            reopen,
            acquire_timeout,
        })))
    }

    /// Waits for the connection and holds it until the returned guard is dropped; opens it
    /// again first if its thread was found gone.
    ///
    /// # Errors
    /// `PoolTimedOut` after [`ACQUIRE_TIMEOUT`]; `PoolClosed` once the writer is closed;
    /// `WorkerCrashed` when a lost in-memory connection cannot come back; the open's error when
    /// a lost connection cannot be opened again.
    pub(crate) async fn acquire(&self) -> Result<WriterConn<'_>, Error> {
        let inner = &*self.0;
        let mut conn = tokio::time::timeout(inner.acquire_timeout, inner.conn.lock())
            .await
            .map_err(|_| Error::PoolTimedOut)?;
        if inner.closed.load(Ordering::SeqCst) {
            return Err(Error::PoolClosed);
        }
        if inner.lost.load(Ordering::SeqCst) || conn.is_none() {
            if !inner.reopen {
                return Err(Error::WorkerCrashed);
            }
            *conn = None;
            *conn = Some(inner.options.connect().await?);
            inner.lost.store(false, Ordering::SeqCst);
            inner.script_open.store(false, Ordering::SeqCst);
        }
        let mut conn = WriterConn { conn, lost: &inner.lost };
        if inner.script_open.load(Ordering::SeqCst) {
            // A script's future was dropped before it ended (its statements run on; they may
            // have stopped between its `BEGIN` and its `COMMIT`): its transaction must not
            // swallow the statements that come next.
            rollback_script(&mut conn).await?;
            inner.script_open.store(false, Ordering::SeqCst);
        }
        Ok(conn)
    }

    /// Runs a script in one hop to the connection's thread: statements separated by `;` that
    /// open and end their own transaction (`BEGIN; …; COMMIT`), or a single statement, which is
    /// a transaction of its own (a failed or dropped one leaves nothing to roll back). Its
    /// parameters are numbered (`$1`, shared by all its statements) or anonymous (`?`, bound in
    /// order). Returns the rows its statements returned.
    ///
    /// A transaction through sqlx (`BEGIN`, each statement, `COMMIT`) is one hop per
    /// statement. sqlx does not know about a transaction a script opens, so the writer makes
    /// sure none stays open: when the script fails, or when its future is dropped before it
    /// ends, its transaction is rolled back before the connection's next statement (a script
    /// that got to its `COMMIT` is not undone: the rollback then finds no transaction).
    ///
    /// # Errors
    /// As [`SqliteWriter::acquire`], and the first failing statement's error.
    pub(crate) async fn fetch_script<'q>(
        &self,
        script: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> Result<Vec<SqliteRow>, Error> {
        let mut conn = self.acquire().await?;
        let open = &self.0.script_open;
        open.store(true, Ordering::SeqCst);
        let result = (&mut *conn).fetch_all(script).await;
        let result = conn.check(result);
        if result.is_err() && rollback_script(&mut conn).await.is_err() {
            // Left set: the next statement tries the rollback again first.
            return result;
        }
        open.store(false, Ordering::SeqCst);
        result
    }

    /// Connections open: 1 while the writer is open (whether in use or not), 0 once it is closed
    /// or found lost.
    pub(crate) fn size(&self) -> u32 {
        let inner = &*self.0;
        u32::from(!inner.closed.load(Ordering::SeqCst) && !inner.lost.load(Ordering::SeqCst))
    }

    /// Connections open and not in use.
    pub(crate) fn num_idle(&self) -> usize {
        match self.0.conn.try_lock() {
            Ok(conn) => usize::from(conn.is_some() && self.size() == 1),
            Err(_) => 0,
        }
    }

    /// Closes the writer: statements waiting for the connection, and later ones, fail with
    /// `PoolClosed`; the connection closes once the statement running on it is done.
    pub(crate) async fn close(&self) {
        self.0.closed.store(true, Ordering::SeqCst);
        let conn = self.0.conn.lock().await.take();
        if let Some(conn) = conn
            && let Err(e) = sqlx::Connection::close(conn).await
        {
            tracing::warn!(error = %e, "closing the SQLite writer failed");
        }
    }
}

impl<'c> Executor<'c> for &'c SqliteWriter {
    type Database = Sqlite;

    fn execute<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<SqliteQueryResult, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        Box::pin(async move {
            let mut conn = self.acquire().await?;
            let result = (&mut *conn).execute(query).await;
            conn.check(result)
        })
    }

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<SqliteQueryResult, SqliteRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        // The results are read whole while the connection is held (see the module
        // documentation).
        let all = async move {
            let mut conn = self.acquire().await?;
            let all: Vec<_> = (&mut *conn).fetch_many(query).collect().await;
            if let Some(Err(Error::WorkerCrashed)) = all.last() {
                note(conn.lost, &Err::<(), _>(Error::WorkerCrashed));
            }
            Ok::<_, Error>(futures_util::stream::iter(all))
        };
        futures_util::stream::once(all).try_flatten().boxed()
    }

    fn fetch_all<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Vec<SqliteRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        Box::pin(async move {
            let mut conn = self.acquire().await?;
            let result = (&mut *conn).fetch_all(query).await;
            conn.check(result)
        })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<SqliteRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        Box::pin(async move {
            let mut conn = self.acquire().await?;
            let result = (&mut *conn).fetch_optional(query).await;
            conn.check(result)
        })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [SqliteTypeInfo],
    ) -> BoxFuture<'e, Result<SqliteStatement, Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let mut conn = self.acquire().await?;
            let result = (&mut *conn).prepare_with(sql, parameters).await;
            conn.check(result)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn writer() -> (tempfile::TempDir, SqliteWriter) {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("w.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let writer = SqliteWriter::connect(options, true).await.unwrap();
        sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY)").execute(&writer).await.unwrap();
        (dir, writer)
    }

    /// Rows as another connection to the file sees them.
    async fn rows_seen_elsewhere(dir: &tempfile::TempDir) -> Vec<i64> {
        let options = SqliteConnectOptions::new().filename(dir.path().join("w.db"));
        let mut other = options.connect().await.unwrap();
        let rows = sqlx::query_scalar("SELECT k FROM t ORDER BY k").fetch_all(&mut other).await;
        sqlx::Connection::close(other).await.unwrap();
        rows.unwrap()
    }

    /// A transaction given up without a commit, dropped or cancelled half-way, is rolled back
    /// before the connection's next statement, which then runs (and commits) on its own.
    #[tokio::test]
    async fn a_transaction_given_up_uncommitted_leaves_nothing_behind() {
        let (dir, writer) = writer().await;
        {
            let mut conn = writer.acquire().await.unwrap();
            let mut tx = conn.begin_tx().await.unwrap();
            sqlx::query("INSERT INTO t (k) VALUES (1)").execute(&mut *tx).await.unwrap();
        }
        let cancelled = tokio::time::timeout(Duration::from_millis(50), async {
            let mut conn = writer.acquire().await.unwrap();
            let mut tx = conn.begin_tx().await.unwrap();
            sqlx::query("INSERT INTO t (k) VALUES (2)").execute(&mut *tx).await.unwrap();
            std::future::pending::<()>().await;
        })
        .await;
        assert!(cancelled.is_err());
        sqlx::query("INSERT INTO t (k) VALUES (3)").execute(&writer).await.unwrap();
        assert_eq!(rows_seen_elsewhere(&dir).await, [3]);
    }

    /// A script commits all its statements or none. One that fails half-way is rolled back;
    /// one whose future is dropped half-way (its statements stop where its rows found nobody
    /// reading them) is rolled back before the next statement, which then commits on its own.
    #[tokio::test]
    async fn a_script_commits_whole_or_not_at_all() {
        let (dir, writer) = writer().await;
        let rows = writer
            .fetch_script(
                sqlx::query(
                    "BEGIN; INSERT INTO t (k) VALUES ($1) RETURNING k; \
                 INSERT INTO t (k) VALUES ($2) RETURNING k; COMMIT",
                )
                .bind(1)
                .bind(2),
            )
            .await
            .unwrap();
        let returned: Vec<i64> = rows.iter().map(|r| sqlx::Row::get(r, 0)).collect();
        assert_eq!(returned, [1, 2]);
        // The second statement fails (`k` is taken): the first is undone.
        let failed = writer
            .fetch_script(sqlx::query(
                "BEGIN; INSERT INTO t (k) VALUES (10); INSERT INTO t (k) VALUES (1); COMMIT",
            ))
            .await;
        assert!(failed.is_err());
        sqlx::query("INSERT INTO t (k) VALUES (11)").execute(&writer).await.unwrap();
        assert_eq!(rows_seen_elsewhere(&dir).await, [1, 2, 11]);
        // Dropped while its rows are being read: many rows, more than the channel they come
        // through holds, so the connection's thread waits for a reader that is gone.
        let mut script = Box::pin(writer.fetch_script(sqlx::query(
            "BEGIN; INSERT INTO t (k) VALUES (20); \
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) \
             SELECT x FROM c; INSERT INTO t (k) VALUES (21); COMMIT",
        )));
        let finished = crate::util::poll_times(&mut script, 1, Duration::from_millis(20)).await;
        assert!(!finished);
        drop(script);
        sqlx::query("INSERT INTO t (k) VALUES (22)").execute(&writer).await.unwrap();
        assert_eq!(rows_seen_elsewhere(&dir).await, [1, 2, 11, 22]);
    }

    /// A statement that finds the connection's thread gone marks it lost; the next statement
    /// opens it again, on the same file.
    #[tokio::test]
    async fn a_lost_connection_is_opened_again() {
        let (dir, writer) = writer().await;
        sqlx::query("INSERT INTO t (k) VALUES (1)").execute(&writer).await.unwrap();
        {
            let conn = writer.acquire().await.unwrap();
            let _ = conn.check::<()>(Err(Error::WorkerCrashed));
        }
        assert_eq!(writer.size(), 0);
        sqlx::query("INSERT INTO t (k) VALUES (2)").execute(&writer).await.unwrap();
        assert_eq!(writer.size(), 1);
        assert_eq!(rows_seen_elsewhere(&dir).await, [1, 2]);
    }

    /// An in-memory database is not opened again: a new one would be empty.
    #[tokio::test]
    async fn a_lost_in_memory_connection_stays_lost() {
        let options = SqliteConnectOptions::new().in_memory(true);
        let writer = SqliteWriter::connect(options, false).await.unwrap();
        {
            let conn = writer.acquire().await.unwrap();
            let _ = conn.check::<()>(Err(Error::WorkerCrashed));
        }
        let err = sqlx::query("SELECT 1").execute(&writer).await.unwrap_err();
        assert!(matches!(err, Error::WorkerCrashed), "{err:?}");
    }

    /// Statements from many tasks take turns on the one connection; `close` fails those still
    /// waiting, and later ones, with `PoolClosed`, as closing a pool does.
    #[tokio::test]
    async fn statements_take_turns_and_fail_once_closed() {
        let (dir, writer) = writer().await;
        let inserts = (0..32).map(|k| {
            let writer = writer.clone();
            tokio::spawn(async move {
                sqlx::query("INSERT INTO t (k) VALUES ($1)").bind(k).execute(&writer).await
            })
        });
        for insert in futures_util::future::join_all(inserts).await {
            insert.unwrap().unwrap();
        }
        assert_eq!(rows_seen_elsewhere(&dir).await.len(), 32);
        assert_eq!((writer.size(), writer.num_idle()), (1, 1));
        let held = writer.acquire().await.unwrap();
        let waiting = tokio::spawn({
            let writer = writer.clone();
            async move { sqlx::query("SELECT 1").execute(&writer).await }
        });
        tokio::task::yield_now().await;
        let closing = tokio::spawn({
            let writer = writer.clone();
            async move { writer.close().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        closing.await.unwrap();
        let err = waiting.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::PoolClosed), "{err:?}");
        assert_eq!(writer.size(), 0);
        let err = sqlx::query("SELECT 1").execute(&writer).await.unwrap_err();
        assert!(matches!(err, Error::PoolClosed), "{err:?}");
    }

    /// Waiting for the connection ends with `PoolTimedOut`, as a pool's acquire does.
    #[tokio::test]
    async fn waiting_for_the_connection_times_out() {
        let options = SqliteConnectOptions::new().in_memory(true);
        let writer = SqliteWriter::connect_waiting(options, false, Duration::from_millis(100))
            .await
            .unwrap();
        let _held = writer.acquire().await.unwrap();
        let err = sqlx::query("SELECT 1").execute(&writer).await.unwrap_err();
        assert!(matches!(err, Error::PoolTimedOut), "{err:?}");
    }
}
