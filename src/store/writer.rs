//! SQLite's one writing connection, held by the store instead of a pool.
//!
//! Writes to an SQLite file go through one connection (see `Store::connect`). sqlx's pool of one
//! connection did that too, but a pool checks a connection in and out around every statement
//! that is not in a transaction, and pings it (a hop to the connection's thread and back) every
//! time it comes back, and the next statement waits for that ping. Holding the connection behind
//! an async lock instead: one statement, one hop. Measured on one core, `SELECT 1` took 21.7 µs
//! through the pool and 9.2 µs on the held connection (BENCHMARKS.md).
//!
//! [`SqliteWriter`] is an [`Executor`] by shared reference, like `&Pool`, so the queries written
//! once for both backends (`with_pool!`) run on it unchanged; `acquire` gives the connection
//! itself, for transactions and for statements run back to back.
//!
//! A future dropped while it holds the connection leaves it as sqlx leaves a connection: the
//! statement runs to its end on the connection's thread, and a transaction that was not
//! committed is rolled back before the connection's next statement.

use std::sync::Arc;

use futures_util::{StreamExt as _, TryStreamExt as _, future::BoxFuture, stream::BoxStream};
use sqlx::{
    Either, Error, Execute, Executor, Sqlite, SqliteConnection,
    sqlite::{SqliteQueryResult, SqliteRow, SqliteStatement, SqliteTypeInfo},
};
use tokio::sync::{Mutex, MutexGuard};

/// See the module documentation. Cheap to clone: every clone is the same connection.
#[derive(Clone, Debug)]
pub(crate) struct SqliteWriter(Arc<Mutex<Option<SqliteConnection>>>);

/// The writing connection, held until dropped.
#[derive(Debug)]
pub(crate) struct WriterConn<'a>(MutexGuard<'a, Option<SqliteConnection>>);

impl std::ops::Deref for WriterConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.0.as_ref().expect("a closed writer is never handed out")
    }
}

impl std::ops::DerefMut for WriterConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.0.as_mut().expect("a closed writer is never handed out")
    }
}

impl SqliteWriter {
    /// Holds `conn` as the writing connection.
    pub(crate) fn new(conn: SqliteConnection) -> Self {
        Self(Arc::new(Mutex::new(Some(conn))))
    }

    /// Waits for the connection and holds it until the returned guard is dropped.
    ///
    /// # Errors
    /// [`Error::PoolClosed`] once the writer is closed.
    pub(crate) async fn acquire(&self) -> Result<WriterConn<'_>, Error> {
        let conn = self.0.lock().await;
        if conn.is_none() {
            return Err(Error::PoolClosed);
        }
        Ok(WriterConn(conn))
    }

    /// Connections open: one until closed.
    pub(crate) fn size(&self) -> u32 {
        match self.0.try_lock() {
            Ok(conn) => u32::from(conn.is_some()),
            Err(_) => 1,
        }
    }

    /// Connections open and not in use.
    pub(crate) fn num_idle(&self) -> usize {
        self.0.try_lock().map_or(0, |conn| usize::from(conn.is_some()))
    }

    /// Closes the connection once the statement running on it is done; later statements fail
    /// with [`Error::PoolClosed`].
    pub(crate) async fn close(&self) {
        let conn = self.0.lock().await.take();
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
        Box::pin(async move { (&mut *self.acquire().await?).execute(query).await })
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
            Ok::<_, Error>(futures_util::stream::iter(all))
        };
        futures_util::stream::once(all).try_flatten().boxed()
    }

    fn fetch_all<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Vec<SqliteRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        Box::pin(async move { (&mut *self.acquire().await?).fetch_all(query).await })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<SqliteRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        Box::pin(async move { (&mut *self.acquire().await?).fetch_optional(query).await })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [SqliteTypeInfo],
    ) -> BoxFuture<'e, Result<SqliteStatement, Error>>
    where
        'c: 'e,
    {
        Box::pin(async move { (&mut *self.acquire().await?).prepare_with(sql, parameters).await })
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
        let conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
        let writer = SqliteWriter::new(conn);
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
