//! The SQL store: the durable inbox, the Matrix state cache and the bridge's own mappings.
//!
//! One [`Store`] serves SQLite (embedded, the default) and PostgreSQL. Most queries are written
//! once in SQL valid on both dialects (`$1` placeholders, `ON CONFLICT`, `RETURNING`) and run on
//! the pool of whichever backend the URL named; the `with_pool!` macro expands a body once per
//! backend. Where the dialects differ (their JSON functions), or where a statement for one
//! backend saves round trips or page writes (the intake, the progress records), each backend has
//! its own text. Schema changes are numbered files in `migrations/{sqlite,postgres}/`, embedded
//! in the binary and applied at connect time.
//!
//! Every call fails with [`StoreError::Database`] when the database does, and with
//! [`StoreError::Corrupt`] when a stored value does not decode (a row not written through this
//! API); a call's `# Errors` section says only what else to expect.

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool, Row, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};

use crate::config::{DatabaseConfig, SQLITE_CACHE_MIB, SqliteSynchronous};

mod checkpoint;
#[cfg(feature = "encryption")]
pub(crate) mod crypto;
#[cfg(feature = "encryption")]
mod crypto_inbox;
mod ephemeral;
mod inbox;
mod mappings;
mod remote_queue;
mod seen;
mod state;
mod state_cache;
#[doc(hidden)]
pub mod testing_support;
mod users;
mod writer;

pub(crate) use inbox::{
    AcceptOutcome, InboxPos, IncomingTxn, NewEvent, PendingBatch, PendingEvent,
};
pub use inbox::{InboxStats, InboxStatus, ParkedEvent};
pub(crate) use mappings::PendingRow;
pub use mappings::{GhostRow, MessageRow, PortalRow};
pub(crate) use remote_queue::{NewRemote, QUEUE_READ_MAX, QueuedRow, ReactionRow};
pub use state::{Member, MemberRow, Membership, RoomStateField};
pub use users::{AddLogin, UserRow};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed a query, or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed to apply.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        /// The migration's number.
        version: i64,
        /// Its file name.
        name: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database holds a schema newer than this build knows.
    #[error("the database schema is at version {found}, newer than this build ({known})")]
    SchemaTooNew {
        /// The version in the database.
        found: i64,
        /// The newest version this build has.
        known: i64,
    },
    /// A stored value could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database the store talks to.
#[derive(Clone, Debug)]
enum Backend {
    Sqlite(writer::SqliteWriter),
    Postgres(PgPool),
}

/// A handle to the SQL store. Cheap to clone: it wraps connection pools (and SQLite's one
/// writing connection).
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// SQLite files only: connections for read-only queries (see `with_reader!`).
    readers: Option<SqlitePool>,
    /// PostgreSQL only: connections with `synchronous_commit = off`, opened when first needed
    /// (see `with_relaxed!`).
    relaxed: Option<PgPool>,
    /// Portals by room ID and by key (and rooms and keys known to have none), and ghosts by
    /// remote user, for the per-event lookups. Every portal and ghost write goes through this
    /// `Store` and clears it; the generation keeps a lookup that
    /// raced with a write from caching the old answer. One process per database, as always.
    portal_cache: std::sync::Arc<std::sync::Mutex<PortalCache>>,
    /// Rooms' cached `m.room.encryption`, which an intent with the bridge device reads before
    /// every send (see `state.rs`).
    encryption_cache: std::sync::Arc<std::sync::Mutex<state::EncryptionCache>>,
    /// Which remote messages' mappings were written lately (see `Store::mapped_since`).
    mapping_writes: std::sync::Arc<std::sync::Mutex<remote_queue::MappingWrites>>,
    /// Woken when events were put back in the inbox outside the server's intake
    /// ([`Store::retry_parked`]), so the dispatcher looks at once.
    inbox_wake: std::sync::Arc<tokio::sync::Notify>,
    /// Memberships and registered users (`mx_membership`, `mx_registered`), bounded, for the
    /// per-send `ensure_joined`/`ensure_registered`. Every write of those tables goes through
    /// this `Store` and updates it once the database took the write (see `store/state_cache.rs`).
    state_cache: std::sync::Arc<state_cache::StateCache>,
    /// SQLite: membership writes waiting to go to the database together (see `state.rs`).
    member_writes: std::sync::Arc<state::MemberWrites>,
    /// Our users' typing and presence as last sent, in memory (see `store/ephemeral.rs`).
    ephemeral: std::sync::Arc<ephemeral::EphemeralCache>,
    /// The event IDs of the stored inbox batches, indexed in memory for the intake's dedup
    /// (see `store/seen.rs`).
    seen: std::sync::Arc<SeenIndex>,
    /// SQLite files only: checkpoints the WAL beside the writer (see `store/checkpoint.rs`).
    checkpointer: Option<std::sync::Arc<checkpoint::Checkpointer>>,
}

/// See `Store::seen`. SQLite only: on PostgreSQL the intake finds every ID in `mx_event_seen`.
#[derive(Debug, Default)]
pub(crate) struct SeenIndex {
    /// Held while transactions are stored (across the database transaction), so the index and
    /// the stored batches change together; `true` once the index was built from the database.
    accepting: tokio::sync::Mutex<bool>,
    window: std::sync::Mutex<seen::SeenWindow>,
}

/// See `Store::portal_cache`.
#[derive(Debug, Default)]
pub(crate) struct PortalCache {
    pub(crate) generation: u64,
    pub(crate) by_room: crate::util::FastMap<String, Option<PortalRow>>,
    pub(crate) by_key: crate::util::FastMap<crate::remote::PortalKey, Option<PortalRow>>,
    /// Ghosts by remote user ID (written, like portals, only through the store).
    pub(crate) ghosts: crate::util::FastMap<String, Option<GhostRow>>,
}

/// Prepared statements kept by SQLite's writing connection (see `Store::connect`).
const WRITER_STATEMENTS: usize = 512;

/// How long a PostgreSQL connection may sit idle in its pool before it is pinged on its way out.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A PostgreSQL connection leaving its pool is pinged (a round trip) only when it sat idle for
/// [`PING_IDLE_AFTER`] or more: long enough for the server to have restarted meanwhile. sqlx's
/// default pings on every checkout: one round trip more per statement, on top of the ping every
/// connection gets when it goes back.
fn ping_if_idle(
    conn: &mut sqlx::PgConnection,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, std::result::Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if meta.idle_for >= PING_IDLE_AFTER {
            sqlx::Connection::ping(conn).await?;
        }
        Ok(true)
    })
}

/// PostgreSQL over loopback TCP without TLS, unless a TLS mode was asked for (`sslmode` in the
/// URL, or `PGSSLMODE`).
///
/// sqlx's default, `prefer`, negotiates TLS whenever the server offers it but verifies nothing
/// and falls back to plain text, so it guards only against someone who can read the traffic,
/// and on loopback that is root. It still costs a handshake per connection and encryption of
/// every statement. A URL that names a TLS mode, even `prefer`, is used as written.
fn plain_on_loopback(url: &str, options: PgConnectOptions, env_mode: bool) -> PgConnectOptions {
    let named = url.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            key.eq_ignore_ascii_case("sslmode") || key.eq_ignore_ascii_case("ssl-mode")
        })
    });
    let host = options.get_host().trim_matches(['[', ']']);
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if named || env_mode || !loopback || over_unix_socket(&options) {
        return options;
    }
    tracing::debug!(host, "PostgreSQL on loopback TCP without a TLS mode: connecting without TLS");
    options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
}

/// Whether sqlx will reach this PostgreSQL server over a Unix socket: when given one, or a host
/// that is a directory (as `PgConnectOptions::fetch_socket` decides).
fn over_unix_socket(options: &PgConnectOptions) -> bool {
    options.get_socket().is_some() || options.get_host().starts_with('/')
}

/// Runs `$body` with `$pool` bound to the concrete pool of the store's backend.
///
/// The body is compiled once per backend, so it must be SQL valid on both.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite($pool) => $body,
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Runs `$body` with `$pool` bound to the pool for writes that may commit without waiting for
/// the WAL flush: on PostgreSQL the `relaxed` pool (`synchronous_commit = off`), otherwise the
/// same pool as [`with_pool!`]. Only for writes whose loss in a crash of the database server is
/// repaired by handling events again: the dispatcher's progress records, and the state cache
/// rows an event writes before its handler runs. PostgreSQL loses a suffix of its WAL in such a
/// crash, so a lost state row always comes with the loss of its event's later progress record,
/// and the event is handled (and its state written) again.
macro_rules! with_relaxed {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite($pool) => $body,
            $crate::store::Backend::Postgres(pg) => {
                let $pool = $store.relaxed_or(pg);
                $body
            }
        }
    };
}
pub(crate) use with_relaxed;

/// Runs `$body` with `$pool` bound to the pool for read-only queries: on an SQLite file the
/// readers' pool (WAL readers run beside the one writer and never wait for it), otherwise the
/// same pool as [`with_pool!`].
macro_rules! with_reader {
    ($store:expr, |$pool:ident| $body:expr) => {
        match (&$store.backend, &$store.readers) {
            ($crate::store::Backend::Sqlite(_), Some($pool)) => $body,
            ($crate::store::Backend::Sqlite($pool), None) => $body,
            ($crate::store::Backend::Postgres($pool), _) => $body,
        }
    };
}
pub(crate) use with_reader;

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Every migration, in order. The same number is the same logical change on both backends.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_core.sql",
        sqlite: include_str!("../migrations/sqlite/0001_core.sql"),
        postgres: include_str!("../migrations/postgres/0001_core.sql"),
    },
    Migration {
        version: 2,
        name: "0002_bridge.sql",
        sqlite: include_str!("../migrations/sqlite/0002_bridge.sql"),
        postgres: include_str!("../migrations/postgres/0002_bridge.sql"),
    },
    Migration {
        version: 3,
        name: "0003_inbox_batches.sql",
        sqlite: include_str!("../migrations/sqlite/0003_inbox_batches.sql"),
        postgres: include_str!("../migrations/postgres/0003_inbox_batches.sql"),
    },
    Migration {
        version: 4,
        name: "0004_batch_event_ids.sql",
        sqlite: include_str!("../migrations/sqlite/0004_batch_event_ids.sql"),
        postgres: include_str!("../migrations/postgres/0004_batch_event_ids.sql"),
    },
    Migration {
        version: 5,
        name: "0005_portal_keys.sql",
        sqlite: include_str!("../migrations/sqlite/0005_portal_keys.sql"),
        postgres: include_str!("../migrations/postgres/0005_portal_keys.sql"),
    },
    Migration {
        version: 6,
        name: "0006_remote_queue.sql",
        sqlite: include_str!("../migrations/sqlite/0006_remote_queue.sql"),
        postgres: include_str!("../migrations/postgres/0006_remote_queue.sql"),
    },
    Migration {
        version: 7,
        name: "0007_users.sql",
        sqlite: include_str!("../migrations/sqlite/0007_users.sql"),
        postgres: include_str!("../migrations/postgres/0007_users.sql"),
    },
    Migration {
        version: 8,
        name: "0008_login_spaces.sql",
        sqlite: include_str!("../migrations/sqlite/0008_login_spaces.sql"),
        postgres: include_str!("../migrations/postgres/0008_login_spaces.sql"),
    },
    Migration {
        version: 9,
        name: "0009_crypto.sql",
        sqlite: include_str!("../migrations/sqlite/0009_crypto.sql"),
        postgres: include_str!("../migrations/postgres/0009_crypto.sql"),
    },
    Migration {
        version: 10,
        name: "0010_crypto_inbox.sql",
        sqlite: include_str!("../migrations/sqlite/0010_crypto_inbox.sql"),
        postgres: include_str!("../migrations/postgres/0010_crypto_inbox.sql"),
    },
    Migration {
        version: 11,
        name: "0011_remote_queue_message_id.sql",
        sqlite: include_str!("../migrations/sqlite/0011_remote_queue_message_id.sql"),
        postgres: include_str!("../migrations/postgres/0011_remote_queue_message_id.sql"),
    },
];

impl Store {
    /// Connects to the database named by the config and applies pending migrations.
    ///
    /// A `sqlite:` URL creates the file on first run and uses WAL; `postgres://` connects to an
    /// existing database.
    ///
    /// # Errors
    /// [`StoreError::Migration`] when a migration fails; [`StoreError::SchemaTooNew`] when the
    /// database's schema is newer than this build.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self> {
        let url = config.url.as_str();
        let mut readers = None;
        let mut relaxed = None;
        let mut checkpointer = None;
        let backend = if url.starts_with("sqlite:") {
            let synchronous = match config.sqlite_synchronous {
                SqliteSynchronous::Normal => sqlx::sqlite::SqliteSynchronous::Normal,
                SqliteSynchronous::Full => sqlx::sqlite::SqliteSynchronous::Full,
            };
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .busy_timeout(Duration::from_secs(10))
                // The bound on the WAL: a checkpoint at this size runs inside the commit that
                // takes the WAL past it. Before that, a task checkpoints beside the writer.
                .pragma("wal_autocheckpoint", "10000")
                .foreign_keys(true);
            // Writes go through one connection. SQLite has one writer at a time: a second
            // connection's write would wait for the first one's lock by polling it in sleeps of
            // a millisecond and more (SQLite's busy handler), while one connection queues the
            // statements and runs them back to back. Read-only queries go through up to
            // `max_connections` more, opened when needed: in WAL mode readers neither wait for
            // the writer nor hold it up. (An in-memory database exists once per connection, so
            // it has the one.)
            // The readers' pool does not ping a connection as it leaves the pool (sqlx's
            // default): a ping is a hop to the connection's thread and back, and a connection to
            // a local file does not go away. (sqlx still pings each one as it comes back.)
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            readers = (!in_memory).then(|| {
                SqlitePoolOptions::new()
                    .max_connections(config.max_connections)
                    .min_connections(0)
                    .test_before_acquire(false)
                    .connect_lazy_with(options.clone())
            });
            checkpointer = readers
                .clone()
                .map(|readers| std::sync::Arc::new(checkpoint::Checkpointer::start(readers)));
            // The writer is one connection held by the store, not a pool: a pool checks it out
            // and back in around every statement, with a ping on the way back (`writer.rs`).
            // It runs multi-row statements whose text depends on the row count (up to
            // `INSERT_CHUNK` rows, for a few tables, and the remote queue's scripts): kept
            // prepared, those in use fit in 512, where sqlx's default of 100 would have them
            // prepared again and again (one that falls out is only prepared again).
            // Its page cache is the one that matters: every write, and the intake's lookups in
            // the dedup index, go through it (`database.sqlite_cache_mib`; the readers keep
            // SQLite's default, one per connection).
            // (Clamped to what `Config::validate` allows, for a config built in code.)
            let cache_kib = i64::from(
                config.sqlite_cache_mib.clamp(*SQLITE_CACHE_MIB.start(), *SQLITE_CACHE_MIB.end()),
            ) * 1024;
            let options = options
                .statement_cache_capacity(WRITER_STATEMENTS)
                .pragma("cache_size", format!("-{cache_kib}"));
            Backend::Sqlite(writer::SqliteWriter::connect(options, !in_memory).await?)
        } else {
            let options = Self::postgres_options(url)?;
            relaxed = Some(
                PgPoolOptions::new()
                    .max_connections(config.max_connections.div_ceil(2).max(1))
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(10))
                    .test_before_acquire(false)
                    .before_acquire(ping_if_idle)
                    .connect_lazy_with(options.clone().options([("synchronous_commit", "off")])),
            );
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .test_before_acquire(false)
                .before_acquire(ping_if_idle)
                .connect_with(options)
                .await?;
            Backend::Postgres(pool)
        };
        let store = Self {
            backend,
            readers,
            relaxed,
            portal_cache: std::sync::Arc::default(),
            encryption_cache: std::sync::Arc::default(),
            mapping_writes: std::sync::Arc::default(),
            inbox_wake: std::sync::Arc::default(),
            state_cache: std::sync::Arc::default(),
            member_writes: std::sync::Arc::default(),
            ephemeral: std::sync::Arc::default(),
            seen: std::sync::Arc::default(),
            checkpointer,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The options the store connects to PostgreSQL at `url` with: the URL as sqlx reads it,
    /// except that loopback TCP with no TLS mode named goes without TLS (docs/deploy.md). For
    /// tools that open their own connection next to a store's (migrations by hand, benchmarks).
    ///
    /// # Errors
    /// When `url` is not a PostgreSQL URL sqlx accepts.
    pub fn postgres_options(url: &str) -> Result<PgConnectOptions> {
        let options = PgConnectOptions::from_str(url)?;
        Ok(plain_on_loopback(url, options, std::env::var_os("PGSSLMODE").is_some()))
    }

    /// Connects to an SQLite database at `url` (for example `sqlite::memory:`) with defaults.
    ///
    /// # Errors
    /// As [`Store::connect`].
    pub async fn connect_url(url: &str) -> Result<Self> {
        Self::connect(&DatabaseConfig { url: url.into(), ..DatabaseConfig::default() }).await
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// The number of database connections open and idle (on SQLite, the writer's and the
    /// readers' together; on PostgreSQL, with the progress records' connections).
    pub fn pool_usage(&self) -> (u32, usize) {
        let readers = self.readers.as_ref().map_or((0, 0), |r| (r.size(), r.num_idle()));
        let relaxed = self.relaxed.as_ref().map_or((0, 0), |r| (r.size(), r.num_idle()));
        let writer = with_pool!(self, |pool| (pool.size(), pool.num_idle()));
        (writer.0 + readers.0 + relaxed.0, writer.1 + readers.1 + relaxed.1)
    }

    /// The pool for writes that need not wait for the WAL flush (see `with_relaxed!`), given
    /// the store's PostgreSQL pool.
    pub(crate) fn relaxed_or<'a>(&'a self, pg: &'a PgPool) -> &'a PgPool {
        self.relaxed.as_ref().unwrap_or(pg)
    }

    /// Tells the checkpoint task that the WAL grew (SQLite files; nothing otherwise).
    pub(crate) fn wal_grew(&self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.poke();
        }
    }

    /// Woken when events were put back in the inbox outside the server's intake.
    pub(crate) fn inbox_wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.inbox_wake.clone()
    }

    /// Forgets what the store keeps in memory: the cached portals and ghosts, and the cached
    /// memberships and registrations.
    ///
    /// The store's own writes keep those caches right; call this after changing `mx_portal`,
    /// `mx_ghost`, `mx_membership` or `mx_registered` some other way (SQL run on the database directly, by a
    /// tool or a test), or lookups may answer from before that change.
    pub fn forget_caches(&self) {
        self.forget_cached_portals();
        self.state_cache.clear();
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        if let Some(readers) = &self.readers {
            readers.close().await;
        }
        if let Some(relaxed) = &self.relaxed {
            relaxed.close().await;
        }
        with_pool!(self, |pool| pool.close().await);
    }

    /// Brings the schema up to date, on one connection.
    ///
    /// One connection, because sqlx pings a connection handed back to the pool before it is
    /// idle again: an acquire right after a release opens a second connection, which on
    /// PostgreSQL over TCP costs a connection setup (and a TLS handshake). A database already
    /// up to date costs two statements: the table check and the version read.
    async fn migrate(&self) -> Result<()> {
        let known = MIGRATIONS.last().map_or(0, |m| m.version);
        let postgres = self.backend_name() == "postgres";
        // The recorded schema version (`None` on a new database), refused when newer than this
        // build's last migration. A macro: each backend's connection is its own type.
        macro_rules! checked_version {
            ($conn:expr) => {{
                let found: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM mx_schema")
                    .fetch_one(&mut *$conn)
                    .await?
                    .try_get("v")?;
                if let Some(found) = found.filter(|&f| f > known) {
                    return Err(StoreError::SchemaTooNew { found, known });
                }
                found
            }};
        }
        with_pool!(self, |pool| {
            let mut conn = pool.acquire().await?;
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS mx_schema (\
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
            )
            .execute(&mut *conn)
            .await?;
            let found = checked_version!(conn);
            // Every migration recorded: nothing to do (one missing below the newest is applied).
            let applied: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM mx_schema").fetch_one(&mut *conn).await?;
            if found == Some(known) && usize::try_from(applied).ok() == Some(MIGRATIONS.len()) {
                return Ok(());
            }
            for m in MIGRATIONS {
                let mut tx = writer::BeginTx::begin_tx(&mut conn).await?;
                if postgres {
                    // Two bridge processes starting at once must not both apply a migration.
                    sqlx::query("SELECT pg_advisory_xact_lock(7243001)").execute(&mut *tx).await?;
                }
                let applied: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM mx_schema WHERE version = $1")
                        .bind(m.version)
                        .fetch_optional(&mut *tx)
                        .await?;
                if applied.is_some() {
                    continue;
                }
                let sql = if postgres { m.postgres } else { m.sqlite };
                sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(|source| {
                    StoreError::Migration { version: m.version, name: m.name, source }
                })?;
                sqlx::query(
                    "INSERT INTO mx_schema (version, name, applied_at) VALUES ($1, $2, $3)",
                )
                .bind(m.version)
                .bind(m.name)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            // Another process may have applied newer migrations while we waited for the lock.
            checked_version!(conn);
        });
        Ok(())
    }
}

pub(crate) use crate::util::now_ms;

/// A PostgreSQL schema of its own for a unit test, in the database of `MXBRIDGE_TEST_POSTGRES`.
/// Its SQL is fixed text (SQL is never built at run time in this crate).
#[cfg(test)]
pub(crate) struct TestSchema {
    pub(crate) name: &'static str,
    pub(crate) create: &'static str,
    pub(crate) drop: &'static str,
}

/// A [`TestSchema`] named `$name` (a literal), its SQL written out at compile time.
#[cfg(test)]
macro_rules! test_schema {
    ($name:literal) => {
        $crate::store::TestSchema {
            name: $name,
            create: concat!("CREATE SCHEMA ", $name),
            drop: concat!("DROP SCHEMA IF EXISTS ", $name, " CASCADE"),
        }
    };
}
#[cfg(test)]
pub(crate) use test_schema;

#[cfg(test)]
impl TestSchema {
    fn url() -> Option<String> {
        std::env::var("MXBRIDGE_TEST_POSTGRES").ok().filter(|u| !u.is_empty())
    }

    /// Creates the schema afresh and connects a store to it; `None` (the test is skipped) when
    /// no PostgreSQL is given.
    pub(crate) async fn store(&self) -> Option<Store> {
        self.store_with("").await
    }

    /// As [`TestSchema::store`], with `params` (`key=value&…`) added to the store's URL.
    pub(crate) async fn store_with(&self, params: &str) -> Option<Store> {
        let Some(url) = Self::url() else {
            eprintln!("skipped: set MXBRIDGE_TEST_POSTGRES to run the PostgreSQL suite");
            return None;
        };
        let admin = PgPool::connect(&url).await.unwrap();
        sqlx::query(self.drop).execute(&admin).await.unwrap();
        sqlx::query(self.create).execute(&admin).await.unwrap();
        admin.close().await;
        let sep = if url.contains('?') { '&' } else { '?' };
        let more = if params.is_empty() { String::new() } else { format!("&{params}") };
        let url = format!("{url}{sep}options[search_path]={}{more}", self.name);
        Some(Store::connect_url(&url).await.unwrap())
    }

    /// Closes the store and drops the schema.
    pub(crate) async fn remove(&self, store: Store) {
        store.close().await;
        let admin = PgPool::connect(&Self::url().unwrap()).await.unwrap();
        sqlx::query(self.drop).execute(&admin).await.unwrap();
        admin.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Progress records and state rows commit without waiting for the WAL flush; everything
    /// else (the intake above all) waits for it.
    #[tokio::test]
    async fn on_postgres_only_the_relaxed_pool_skips_the_wal_flush() {
        let schema = test_schema!("t_relaxed_pool");
        let Some(store) = schema.store().await else { return };
        let show = "SHOW synchronous_commit";
        let strict: String =
            with_pool!(store, |pool| sqlx::query_scalar(show).fetch_one(pool).await.unwrap());
        let relaxed: String =
            with_relaxed!(store, |pool| sqlx::query_scalar(show).fetch_one(pool).await.unwrap());
        assert_eq!((strict.as_str(), relaxed.as_str()), ("on", "off"));
        schema.remove(store).await;
    }

    /// A pooled PostgreSQL connection that the server ended while it sat idle is found out as it
    /// leaves the pool (it is pinged after `PING_IDLE_AFTER` idle), so the next query runs on a
    /// new connection instead of failing: the pools skip sqlx's ping on every checkout.
    #[tokio::test]
    async fn postgres_connections_ended_while_idle_are_replaced_before_use() {
        let schema = test_schema!("t_idle_ping");
        let Some(store) = schema.store_with("application_name=t_idle_ping").await else { return };
        let url = TestSchema::url().unwrap();
        let one = "SELECT 1";
        let ask = |store: Store| async move {
            let strict: std::result::Result<i32, _> =
                with_pool!(store, |pool| sqlx::query_scalar(one).fetch_one(pool).await);
            let relaxed: std::result::Result<i32, _> =
                with_relaxed!(store, |pool| sqlx::query_scalar(one).fetch_one(pool).await);
            (strict.map_err(|e| e.to_string()), relaxed.map_err(|e| e.to_string()))
        };
        assert_eq!(ask(store.clone()).await, (Ok(1), Ok(1)));
        let admin = PgPool::connect(&url).await.unwrap();
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 't_idle_ping'",
        )
        .fetch_all(&admin)
        .await
        .unwrap();
        admin.close().await;
        assert!(ended.len() >= 2 && ended.iter().all(|&e| e), "ended {ended:?}");
        tokio::time::sleep(PING_IDLE_AFTER + Duration::from_millis(200)).await;
        assert_eq!(ask(store.clone()).await, (Ok(1), Ok(1)));
        schema.remove(store).await;
    }

    #[test]
    fn a_unix_socket_is_told_from_tcp() {
        for (url, socket) in [
            ("postgres://postgres@127.0.0.1:5432/test", false),
            ("postgres://db.example.org/test?sslmode=require", false),
            ("postgres:///test?host=/var/run/postgresql&user=postgres", true),
            ("postgres://%2Fvar%2Frun%2Fpostgresql/test", true),
        ] {
            assert_eq!(
                over_unix_socket(&PgConnectOptions::from_str(url).unwrap()),
                socket,
                "{url}"
            );
        }
    }

    #[test]
    fn loopback_tcp_without_a_tls_mode_goes_plain() {
        let mode = |url: &str, env: bool| {
            let options = plain_on_loopback(url, PgConnectOptions::from_str(url).unwrap(), env);
            // PgSslMode has no PartialEq: compare its name.
            format!("{:?}", options.get_ssl_mode())
        };
        let (disable, prefer, require) = ("Disable", "Prefer", "Require");
        for url in [
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://postgres@localhost/test",
            "postgres://postgres@[::1]:5432/test",
            "postgres://postgres@127.0.0.2/test?application_name=x",
        ] {
            assert_eq!(mode(url, false), disable, "{url}");
            // PGSSLMODE names a mode: sqlx's reading of it stands.
            assert_ne!(mode(url, true), disable, "{url}");
        }
        for (url, want) in [
            ("postgres://postgres@127.0.0.1:5432/test?sslmode=prefer", prefer),
            ("postgres://postgres@127.0.0.1:5432/test?ssl-mode=require", require),
            ("postgres://db.example.org/test", prefer),
            ("postgres://10.0.0.5/test", prefer),
        ] {
            assert_eq!(mode(url, false), want, "{url}");
        }
        let socket = "postgres:///test?host=/var/run/postgresql&user=postgres";
        assert_eq!(mode(socket, false), prefer);
    }

    /// The default loopback URL really connects without TLS, and `sslmode=prefer` still gets
    /// TLS from a server that offers it.
    #[tokio::test]
    async fn loopback_postgres_connects_plain_unless_told() {
        // Its own schema: the database's public one belongs to nobody's tests.
        let schema = test_schema!("mxb_loopback_tls");
        let Some(url) = TestSchema::url() else { return };
        let ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
        let store = schema.store().await.unwrap();
        let plain: bool =
            with_pool!(store, |pool| sqlx::query_scalar(ssl).fetch_one(pool).await.unwrap());
        let offered: String = with_pool!(store, |pool| {
            sqlx::query_scalar("SHOW ssl").fetch_one(pool).await.unwrap()
        });
        store.close().await;
        let loopback = PgConnectOptions::from_str(&url).unwrap().get_host().starts_with("127.");
        if !loopback || url.contains("sslmode") || std::env::var_os("PGSSLMODE").is_some() {
            eprintln!("skipped: MXBRIDGE_TEST_POSTGRES is not a loopback URL without sslmode");
            return;
        }
        assert!(!plain, "a loopback URL without sslmode negotiated TLS");
        let store = schema.store_with("sslmode=prefer").await.unwrap();
        let tls: bool =
            with_pool!(store, |pool| sqlx::query_scalar(ssl).fetch_one(pool).await.unwrap());
        schema.remove(store).await;
        assert_eq!(tls, offered == "on", "sslmode=prefer against a server with ssl = {offered}");
    }

    /// The writing SQLite connection gets the configured page cache; the readers keep SQLite's
    /// default.
    #[tokio::test]
    async fn the_sqlite_writer_has_the_configured_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let config = DatabaseConfig {
            url: format!("sqlite://{}/cache.db", dir.path().display()),
            sqlite_cache_mib: 3,
            ..DatabaseConfig::default()
        };
        let store = Store::connect(&config).await.unwrap();
        let sql = "PRAGMA cache_size";
        let writer: i64 =
            with_pool!(store, |pool| sqlx::query_scalar(sql).fetch_one(pool).await.unwrap());
        let reader: i64 =
            with_reader!(store, |pool| sqlx::query_scalar(sql).fetch_one(pool).await.unwrap());
        assert_eq!((writer, reader), (-3 * 1024, -2000));
        store.close().await;
    }

    /// A transaction far larger than a TLS record is still one statement and one batch row
    /// over TLS.
    #[tokio::test]
    async fn a_large_transaction_is_one_batch_over_tls() {
        let schema = test_schema!("t_tls_batch");
        let Some(store) = schema.store_with("sslmode=prefer").await else { return };
        let ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
        let tls: bool =
            with_pool!(store, |pool| sqlx::query_scalar(ssl).fetch_one(pool).await.unwrap());
        let offered: String = with_pool!(store, |pool| {
            sqlx::query_scalar("SHOW ssl").fetch_one(pool).await.unwrap()
        });
        assert!(
            tls,
            "this test needs a PostgreSQL server that offers TLS (it has ssl = {offered})"
        );
        let body = "x".repeat(400);
        let ids: Vec<String> = (0..100).map(|i| format!("$tls{i}")).collect();
        let jsons: Vec<String> = ids
            .iter()
            .map(|id| format!(r#"{{"event_id":"{id}","content":{{"body":"{body}"}}}}"#))
            .collect();
        let events: Vec<NewEvent<'_>> = ids
            .iter()
            .zip(&jsons)
            .map(|(id, json)| NewEvent {
                event_id: id.as_str().into(),
                room_id: "!r:x".into(),
                json,
            })
            .collect();
        let outcome = store.accept_transaction("big", "h", &events).await.unwrap();
        assert_eq!(outcome, AcceptOutcome::Stored { new_events: 100 });
        let (batches, stored): (i64, i64) = with_pool!(store, |pool| {
            sqlx::query_as("SELECT count(*), sum(n_events)::BIGINT FROM mx_inbox_batch")
                .fetch_one(pool)
                .await
                .unwrap()
        });
        assert_eq!((batches, stored), (1, 100));
        schema.remove(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_writes_queue_on_one_connection_whatever_the_pool_size() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/one.db", dir.path().display());
        let config = DatabaseConfig { url, max_connections: 8, ..DatabaseConfig::default() };
        let store = Store::connect(&config).await.unwrap();
        // 64 writers at once: none fails on the lock, and no second writing connection is
        // opened (reads have their own pool).
        let writes = (0..64).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = format!("$e{i}");
                let event = crate::store::NewEvent {
                    event_id: id.as_str().into(),
                    room_id: "!r".into(),
                    json: "{}",
                };
                store.accept_transaction(&i.to_string(), "h", &[event]).await
            })
        });
        for w in futures_util::future::join_all(writes).await {
            assert_eq!(w.unwrap().unwrap(), AcceptOutcome::Stored { new_events: 1 });
        }
        assert_eq!(store.pool_usage().0, 1);
        assert_eq!(store.inbox_stats().await.unwrap().pending, 64);
    }

    async fn schema_versions(store: &Store) -> Vec<i64> {
        with_pool!(store, |pool| {
            sqlx::query_scalar("SELECT version FROM mx_schema ORDER BY version")
                .fetch_all(pool)
                .await
                .unwrap()
        })
    }

    #[tokio::test]
    async fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let known: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();

        let store = Store::connect_url(&url).await.unwrap();
        assert_eq!(schema_versions(&store).await, known);
        store.close().await;

        // Up to date: connecting again applies nothing and keeps one row per migration.
        let store = Store::connect_url(&url).await.unwrap();
        assert_eq!(schema_versions(&store).await, known);
        with_pool!(store, |pool| {
            sqlx::query("INSERT INTO mx_schema (version, name, applied_at) VALUES (9999, 'x', 0)")
                .execute(pool)
                .await
                .unwrap();
        });
        store.close().await;

        match Store::connect_url(&url).await {
            Err(StoreError::SchemaTooNew { found: 9999, known: k }) => {
                assert_eq!(Some(&k), known.last());
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }
}
