//! Health facts: what the bridge is doing, whether the homeserver reached it, and how the
//! bridge's supervised tasks fare. The appservice and the supervisor write them; the server's
//! `/health/*` routes and the metrics read them.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// What the bridge is doing, as `/health/state` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum BridgeState {
    /// Starting: the store is ready, the homeserver not yet reached.
    #[default]
    Starting,
    /// Running, and the homeserver answered our ping.
    Running,
    /// The startup ping failed; the detail says why and what to check.
    HomeserverUnreachable(String),
    /// Shutting down.
    Stopping,
}

/// How one of the bridge's supervised tasks fares, as `/health/state` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum TaskState {
    /// Running.
    Running {
        /// How often it was restarted after a failure.
        restarts: u32,
    },
    /// It failed, and waits to be started again.
    Restarting {
        /// How often it was restarted after a failure, this time not counted yet.
        restarts: u32,
        /// The failure.
        error: String,
    },
    /// It ended by itself, or on shutdown.
    Ended,
}

/// Liveness and readiness facts, shared by the server and the appservice's startup.
#[derive(Debug, Default)]
pub struct Health {
    /// The state reported at `/health/state`.
    state: Mutex<BridgeState>,
    /// Set once the bridge started and the inbox runs.
    running: AtomicBool,
    /// Set when the startup ping through the homeserver succeeded.
    homeserver_ok: AtomicBool,
    /// The last ping the homeserver sent us, with when it came.
    last_ping: Mutex<Option<(Instant, Option<String>)>>,
    /// The bridge's supervised tasks, by name.
    tasks: Mutex<BTreeMap<String, TaskState>>,
}

impl Health {
    /// Sets the reported state.
    pub fn set_state(&self, state: BridgeState) {
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
    }

    /// The reported state.
    pub fn state(&self) -> BridgeState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Marks the bridge as running (or not).
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
    }

    /// Whether the bridge is running.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Records whether the homeserver answered the startup ping.
    pub fn set_homeserver_ok(&self, ok: bool) {
        self.homeserver_ok.store(ok, Ordering::SeqCst);
    }

    /// Whether the homeserver answered the startup ping.
    pub fn homeserver_ok(&self) -> bool {
        self.homeserver_ok.load(Ordering::SeqCst)
    }

    pub(crate) fn record_homeserver_ping(&self, transaction_id: Option<String>) {
        if let Ok(mut last) = self.last_ping.lock() {
            *last = Some((Instant::now(), transaction_id));
        }
    }

    /// Records how a supervised task fares.
    pub(crate) fn set_task(&self, name: &str, state: TaskState) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.insert(name.to_owned(), state);
        }
    }

    /// How each supervised task fares, by name.
    pub fn tasks(&self) -> BTreeMap<String, TaskState> {
        self.tasks.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// The `transaction_id` of the last ping the homeserver sent, and how long ago it came.
    pub fn last_homeserver_ping(&self) -> Option<(Duration, Option<String>)> {
        let last = self.last_ping.lock().ok()?;
        last.as_ref().map(|(at, id)| (at.elapsed(), id.clone()))
    }
}
