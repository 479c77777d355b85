//! What the benchmark programs share: the appservice they register, the room IDs of the load,
//! a fresh database per run, and reading a process's memory.
//!
//! The programs are `src/bin/loadgen.rs` (the homeserver side: it pushes transactions),
//! `src/bin/bench_server.rs` (the intake benchmark's server) and `src/bin/bridge_bench.rs` (the
//! bridging benchmark: a one-send bridge and a stub homeserver). `BENCHMARKS.md` says how the
//! scripts in `bench/scripts/` run them.

use std::{
    fmt,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use clap::{Args, ValueEnum};
use mxbridge::Store;
use sqlx::Connection;

/// The `hs_token` the servers expect unless told otherwise.
pub const HS_TOKEN: &str = "hs_token_bench_0123456789abcdef";

/// A room of the load: `!bench000042qzXHbLcFoMiWdNrT:localhost` for `BenchRoom(42)`.
///
/// `loadgen` writes these into its events, and `bridge_bench` joins its ghost to the same rooms.
#[derive(Copy, Clone, Debug)]
pub struct BenchRoom(pub u64);

impl fmt::Display for BenchRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "!bench{:06}qzXHbLcFoMiWdNrT:localhost", self.0)
    }
}

/// The registration of the benchmark appservice, listening on `port`.
pub fn registration_yaml(port: u16, hs_token: &str) -> String {
    format!(
        "id: bench\nurl: http://127.0.0.1:{port}\nas_token: as_token_bench_0123456789abcdef\n\
         hs_token: {hs_token}\nsender_localpart: _bench_bot\nnamespaces:\n  users:\n\
         \x20   - exclusive: true\n      regex: '@_bench_.*:localhost'\n  aliases: []\n  rooms: []\n\
         rate_limited: false\n"
    )
}

/// The config of the benchmark appservice: on `port`, its homeserver on `hs_port` (nothing need
/// listen there when the bridge makes no request), no logging below `warn`.
pub fn config_yaml(port: u16, hs_port: u16, db_url: &str, max_connections: Option<u32>) -> String {
    let max_connections =
        max_connections.map(|n| format!(", max_connections: {n}")).unwrap_or_default();
    format!(
        "homeserver: {{address: 'http://127.0.0.1:{hs_port}', domain: localhost}}\n\
         appservice:\n  id: bench\n  address: 'http://127.0.0.1:{port}'\n  port: {port}\n\
         \x20 bot: {{localpart: _bench_bot}}\n  ghost_localpart_template: '_bench_{{id}}'\n\
         database: {{url: '{db_url}'{max_connections}}}\n\
         inbox: {{shutdown_grace_secs: 1}}\n\
         logging: {{level: warn}}\n"
    )
}

/// The database backend of a run.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Where a server keeps its store: a fresh SQLite file or a fresh PostgreSQL schema per run.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    #[arg(long, value_enum, default_value = "sqlite")]
    pub db: Db,
    /// Directory for the SQLite file (a fresh file is created in it).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// PostgreSQL server; a fresh schema is created in it and dropped at exit.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub pg_url: String,
}

/// A database made for one run: its URL, and the PostgreSQL schema to drop at exit.
#[derive(Debug)]
pub struct FreshDb {
    pub url: String,
    schema: Option<String>,
}

impl DbArgs {
    /// A fresh database for this process: an SQLite file `{prefix}-{pid}.db`, or a PostgreSQL
    /// schema `{prefix}_{pid}`. With `reuse`, the same database every run (SQLite
    /// `bench-reuse.db`, PostgreSQL schema `bench_reuse`), to measure a restart.
    pub async fn fresh(&self, prefix: &str, reuse: bool) -> anyhow::Result<FreshDb> {
        match self.db {
            Db::Sqlite => {
                let dir =
                    self.dir.clone().unwrap_or_else(|| std::env::temp_dir().join("mxbridge-bench"));
                std::fs::create_dir_all(&dir)?;
                let file = if reuse {
                    dir.join("bench-reuse.db")
                } else {
                    let file = dir.join(format!("{prefix}-{}.db", std::process::id()));
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
                    }
                    file
                };
                Ok(FreshDb { url: format!("sqlite://{}", file.display()), schema: None })
            }
            Db::Postgres => {
                let sep = if self.pg_url.contains('?') { '&' } else { '?' };
                let schema = if reuse {
                    "bench_reuse".to_owned()
                } else {
                    format!("{prefix}_{}", std::process::id())
                };
                // One connection, one round trip, made as the store makes its own (loopback
                // without TLS unless the URL names a mode): this runs inside the startup figure.
                let sql = if reuse {
                    format!("CREATE SCHEMA IF NOT EXISTS {schema}")
                } else {
                    format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
                };
                let mut admin =
                    sqlx::PgConnection::connect_with(&Store::postgres_options(&self.pg_url)?)
                        .await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await?;
                admin.close().await?;
                Ok(FreshDb {
                    url: format!("{}{sep}options[search_path]={schema}", self.pg_url),
                    schema: (!reuse).then_some(schema),
                })
            }
        }
    }

    /// Drops the PostgreSQL schema `fresh` made (nothing for SQLite or a reused database).
    pub async fn drop_fresh(&self, db: FreshDb) {
        let Some(schema) = db.schema else { return };
        let Ok(options) = Store::postgres_options(&self.pg_url) else { return };
        if let Ok(mut admin) = sqlx::PgConnection::connect_with(&options).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&mut admin)
            .await;
            let _ = admin.close().await;
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}
