//! SQLite's WAL checkpoints, run beside the writer instead of inside its commits.
//!
//! In WAL mode a commit appends pages to the `-wal` file, and a checkpoint copies them back into
//! the database file: it syncs the WAL, writes the pages and syncs the database. SQLite runs one
//! inside the commit that takes the WAL past `wal_autocheckpoint` pages, on the committing
//! connection, which is the store's only writer: every statement queued behind it waits, the
//! intake's among them, so a homeserver's transaction waited for two `fsync`s.
//!
//! So a task checkpoints from a reader connection while the store writes: a *passive*
//! checkpoint takes no lock a writer needs, and copies what is committed so far. The writer's
//! own checkpoint stays as the bound on the WAL's size, and finds little left to copy and sync.
//! The task sleeps until a writer pokes it, checkpoints every [`INTERVAL`] while the WAL grows,
//! and sleeps again once a checkpoint found nothing new; it ends when the store is dropped or
//! closed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sqlx::SqlitePool;
use tokio::sync::Notify;

/// How often the task checkpoints while writes go on.
const INTERVAL: Duration = Duration::from_millis(250);

/// The writers' side: pokes the task. Dropping the last clone of the store ends it.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The task waits for a poke (no checkpoint is due).
    idle: AtomicBool,
    /// The store is gone.
    closed: AtomicBool,
    wake: Notify,
}

impl Checkpointer {
    /// Starts the task, which checkpoints through `readers` (connections to the same file).
    pub(crate) fn start(readers: SqlitePool) -> Self {
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(readers, shared.clone()));
        Self { shared }
    }

    /// Tells the task that the WAL grew. Cheap when a checkpoint is already due.
    pub(crate) fn poke(&self) {
        if self.shared.idle.swap(false, Ordering::AcqRel) {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

async fn run(readers: SqlitePool, shared: Arc<Shared>) {
    let closed = || shared.closed.load(Ordering::Acquire) || readers.is_closed();
    loop {
        // Wait for a write.
        shared.idle.store(true, Ordering::Release);
        shared.wake.notified().await;
        // Checkpoint every `INTERVAL` until one finds everything copied, or no progress (a
        // reader holds an old snapshot); the next write pokes again.
        let mut last = None;
        loop {
            if closed() {
                return;
            }
            tokio::time::sleep(INTERVAL).await;
            if closed() {
                return;
            }
            match passive_checkpoint(&readers).await {
                Ok(now) => {
                    let settled = now.0 == now.1 || last == Some(now);
                    last = Some(now);
                    if settled {
                        break;
                    }
                }
                Err(e) => {
                    if !closed() {
                        tracing::warn!(
                            error = %e,
                            "background WAL checkpoint failed; SQLite's own will run"
                        );
                    }
                    break;
                }
            }
        }
    }
}

/// Runs `PRAGMA wal_checkpoint(PASSIVE)`: (frames in the WAL, frames copied to the database).
async fn passive_checkpoint(readers: &SqlitePool) -> sqlx::Result<(i64, i64)> {
    let (_busy, log, copied): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(readers).await?;
    Ok((log, copied))
}
