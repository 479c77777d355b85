//! SQLite's one writing connection, held by the store instead of a pool.
//!
//! Writes to an SQLite file go through one connection (see `Store::connect`). sqlx's pool of one
//! connection did that too, but a pool checks a connection in and out around every statement
//! that is not in a transaction, and pings it (a hop to the connection's thread and back) every
//! time it comes back, and the next statement waits for that ping. Holding the connection behind
//! an async lock instead: one statement, one hop. On one core, `SELECT 1` took 23–28 µs through
//! the pool and 9 µs on the held connection (`benches/inbox.rs`, BENCHMARKS.md).
//!
//! [`SqliteWriter`] is an [`Executor`] by shared reference, like `&Pool`, so the queries written
//! once for both backends (`with_pool!`) run on it unchanged; `acquire` gives the connection
//! itself, for transactions and for statements run back to back.
//!
//! A future dropped while it holds the connection leaves it as sqlx leaves a connection: the
//! statement runs to its end on the connection's thread, and a transaction that was not
//! committed is rolled back before the connection's next statement. If the connection's thread
//! is gone (sqlx's `WorkerCrashed`), the statement that found out fails and the next one opens
//! a new connection, as a pool would have.

use std::sync::Arc;

use futures_util::{StreamExt as _, TryStreamExt as _, future::BoxFuture, stream::BoxStream};
use sqlx::{
    ConnectOptions as _, Either, Error, Execute, Executor, Sqlite, SqliteConnection,
    sqlite::{SqliteConnectOptions, SqliteQueryResult, SqliteRow, SqliteStatement, SqliteTypeInfo},
};
use tokio::sync::{Mutex, MutexGuard};

/// See the module documentation. Cheap to clone: every clone is the same connection.
#[derive(Clone, Debug)]
pub(crate) struct SqliteWriter(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    slot: Mutex<Slot>,
    /// To open the connection again after its thread is gone.
    options: SqliteConnectOptions,
}

#[derive(Debug)]
enum Slot {
    Open(SqliteConnection),
    /// Its thread is gone: opened again by the next `acquire`.
    Lost,
    Closed,
}

/// The writing connection, held until dropped.
#[derive(Debug)]
pub(crate) struct WriterConn<'a>(MutexGuard<'a, Slot>);

impl WriterConn<'_> {
    /// Marks the connection lost when `result` says its thread is gone.
    fn check<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if matches!(result, Err(Error::WorkerCrashed)) {
            tracing::error!("the SQLite writer's thread is gone; the next write reconnects");
            *self.0 = Slot::Lost;
        }
        result
    }
}

impl std::ops::Deref for WriterConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match &*self.0 {
            Slot::Open(conn) => conn,
            _ => unreachable!("only an open writer is handed out"),
        }
    }
}

impl std::ops::DerefMut for WriterConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match &mut *self.0 {
            Slot::Open(conn) => conn,
            _ => unreachable!("only an open writer is handed out"),
        }
    }
}

impl SqliteWriter {
    /// Opens the writing connection.
    ///
    /// # Errors
    /// When SQLite cannot open the database.
    pub(crate) async fn connect(options: SqliteConnectOptions) -> Result<Self, Error> {
        let conn = options.connect().await?;
        Ok(Self(Arc::new(Inner { slot: Mutex::new(Slot::Open(conn)), options })))
    }

    /// Waits for the connection and holds it until the returned guard is dropped; opens it
    /// again first if its thread was found gone.
    ///
    /// # Errors
    /// [`Error::PoolClosed`] once the writer is closed; the open's error when a lost connection
    /// cannot be opened again.
    pub(crate) async fn acquire(&self) -> Result<WriterConn<'_>, Error> {
        let mut slot = self.0.slot.lock().await;
        match &*slot {
            Slot::Open(_) => {}
            Slot::Closed => return Err(Error::PoolClosed),
            Slot::Lost => *slot = Slot::Open(self.0.options.connect().await?),
        }
        Ok(WriterConn(slot))
    }

    /// Connections open: one until closed.
    pub(crate) fn size(&self) -> u32 {
        match self.0.slot.try_lock() {
            Ok(slot) => u32::from(matches!(*slot, Slot::Open(_))),
            Err(_) => 1,
        }
    }

    /// Connections open and not in use.
    pub(crate) fn num_idle(&self) -> usize {
        self.0.slot.try_lock().map_or(0, |slot| usize::from(matches!(*slot, Slot::Open(_))))
    }

    /// Closes the connection once the statement running on it is done; later statements fail
    /// with [`Error::PoolClosed`].
    pub(crate) async fn close(&self) {
        let slot = std::mem::replace(&mut *self.0.slot.lock().await, Slot::Closed);
        if let Slot::Open(conn) = slot
            && let Err(e) = sqlx::Connection::close(conn).await
        {
            tracing::warn!(error = %e, "closing the SQLite writer failed");
        }
    }

    /// Drops the connection as if its thread had gone away.
    #[cfg(test)]
    async fn lose_for_test(&self) {
        *self.0.slot.lock().await = Slot::Lost;
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
        // The results are read whole while the connection is held: a stream that borrowed the
        // guard could not be returned.
        let all = async move {
            let mut conn = self.acquire().await?;
            let all: Vec<_> = (&mut *conn).fetch_many(query).collect().await;
            if let Some(Err(Error::WorkerCrashed)) = all.last() {
                conn.check::<()>(Err(Error::WorkerCrashed)).ok();
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
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("w.db"))
            .create_if_missing(true);
        let writer = SqliteWriter::connect(options).await.unwrap();
        sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY)").execute(&writer).await.unwrap();
        (dir, writer)
    }

    /// A transaction given up without a commit (its future dropped half-way) is rolled back
    /// before the connection's next statement, which then runs outside any transaction.
    #[tokio::test]
    async fn a_transaction_dropped_uncommitted_leaves_nothing_behind() {
        let (_dir, writer) = writer().await;
        {
            let mut conn = writer.acquire().await.unwrap();
            let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
            sqlx::query("INSERT INTO t (k) VALUES (1)").execute(&mut *tx).await.unwrap();
        }
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT k FROM t").fetch_all(&writer).await.unwrap();
        assert!(rows.is_empty(), "{rows:?}");
        // Autocommit again: the insert is there for another connection at once.
        sqlx::query("INSERT INTO t (k) VALUES (2)").execute(&writer).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&writer).await.unwrap();
        assert_eq!(n, 1);
    }

    /// A connection whose thread is gone is opened again for the next statement, on the same
    /// file.
    #[tokio::test]
    async fn a_lost_connection_is_opened_again() {
        let (_dir, writer) = writer().await;
        sqlx::query("INSERT INTO t (k) VALUES (1)").execute(&writer).await.unwrap();
        writer.lose_for_test().await;
        assert_eq!(writer.size(), 0);
        sqlx::query("INSERT INTO t (k) VALUES (2)").execute(&writer).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&writer).await.unwrap();
        assert_eq!((n, writer.size()), (2, 1));
    }

    /// Statements from many tasks take turns on the one connection; after `close` they fail
    /// with `PoolClosed`, as a closed pool's do.
    #[tokio::test]
    async fn statements_take_turns_and_fail_once_closed() {
        let (_dir, writer) = writer().await;
        let inserts = (0..32).map(|k| {
            let writer = writer.clone();
            tokio::spawn(async move {
                sqlx::query("INSERT INTO t (k) VALUES ($1)").bind(k).execute(&writer).await
            })
        });
        for insert in futures_util::future::join_all(inserts).await {
            insert.unwrap().unwrap();
        }
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&writer).await.unwrap();
        assert_eq!(n, 32);
        assert_eq!((writer.size(), writer.num_idle()), (1, 1));
        writer.close().await;
        assert_eq!(writer.size(), 0);
        let err = sqlx::query("SELECT 1").execute(&writer).await.unwrap_err();
        assert!(matches!(err, Error::PoolClosed), "{err:?}");
    }
}
