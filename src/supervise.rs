//! Supervised tasks: the long-running work of a bridge (the connection to the remote network and
//! its read loop, a poller), run by the framework.
//!
//! A bridge lists its tasks in [`crate::Bridge::tasks`]. Each is started after
//! [`crate::Bridge::start`], with a [`Stop`] that fires on shutdown. A task that fails (returns
//! an error or panics) is started again after a pause that doubles from one second up to a
//! minute (and starts over once a run lasted a minute); the failure is logged and shown at
//! `/health/state`. A task that returns `Ok` has ended on purpose and is not restarted. On
//! shutdown every task is told to stop and given `inbox.shutdown_grace_secs`; one still running
//! then is aborted.

use std::{fmt, future::Future, panic::AssertUnwindSafe, pin::Pin, sync::Arc, time::Duration};

use futures_util::FutureExt as _;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    error::BridgeResult,
    health::{Health, TaskState},
};

/// The first pause before a failed task is started again.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause; a run that lasted this long also starts the pauses over.
const LONGEST_PAUSE: Duration = Duration::from_secs(60);

type Run = Pin<Box<dyn Future<Output = BridgeResult> + Send>>;

/// A long-running task of the bridge, started (and started again after a failure) by the
/// framework. See the module documentation.
///
/// ```
/// # use std::sync::Arc;
/// # use mxbridge::{BridgeResult, Stop, Task};
/// # struct MyBridge;
/// # impl MyBridge { async fn read_one(&self) -> BridgeResult { Ok(()) } }
/// fn tasks(bridge: &Arc<MyBridge>) -> Vec<Task> {
///     let bridge = bridge.clone();
///     vec![Task::new("remote-reader", move |mut stop: Stop| {
///         let bridge = bridge.clone();
///         async move {
///             loop {
///                 tokio::select! {
///                     () = stop.stopped() => return Ok(()),
///                     read = bridge.read_one() => read?,
///                 }
///             }
///         }
///     })]
/// }
/// ```
pub struct Task {
    name: String,
    start: Box<dyn Fn(Stop) -> Run + Send + Sync>,
}

impl Task {
    /// A task named `name` (in logs and at `/health/state`); `start` makes one run of it, each
    /// time it is started.
    pub fn new<F, Fut>(name: impl Into<String>, start: F) -> Self
    where
        F: Fn(Stop) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = BridgeResult> + Send + 'static,
    {
        Self { name: name.into(), start: Box::new(move |stop| Box::pin(start(stop))) }
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Tells a task that the bridge is shutting down.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once the bridge is shutting down.
    pub async fn stopped(&mut self) {
        // An error means the sender is gone, which only happens after shutdown began.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the bridge is shutting down.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }
}

/// The running supervisors of a bridge's tasks.
#[derive(Debug)]
pub(crate) struct Supervisor {
    stop: watch::Sender<bool>,
    running: Vec<(String, JoinHandle<()>)>,
}

impl Supervisor {
    /// Starts every task under supervision.
    pub(crate) fn start(tasks: Vec<Task>, health: Arc<Health>) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let running = tasks
            .into_iter()
            .map(|task| {
                let name = task.name.clone();
                let handle = tokio::spawn(supervise(task, Stop(stop_rx.clone()), health.clone()));
                (name, handle)
            })
            .collect();
        Self { stop, running }
    }

    /// Tells every task to stop and waits up to `grace` for them; the rest are aborted.
    pub(crate) async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for (name, mut handle) in self.running {
            if tokio::time::timeout_at(deadline, &mut handle).await.is_err() {
                tracing::warn!(task = %name, "the task did not stop in time; aborting it");
                handle.abort();
            }
        }
    }
}

/// Runs a task until it ends or the bridge stops, starting it again after each failure.
async fn supervise(task: Task, mut stop: Stop, health: Arc<Health>) {
    let name = task.name.as_str();
    let mut restarts = 0u32;
    let mut pause = FIRST_PAUSE;
    loop {
        health.set_task(name, TaskState::Running { restarts });
        let started = tokio::time::Instant::now();
        let run = AssertUnwindSafe((task.start)(stop.clone())).catch_unwind().await;
        let error = match run {
            Ok(Ok(())) => {
                tracing::info!(task = %name, "the task ended");
                break;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the task panicked".to_owned(),
        };
        if stop.is_stopping() {
            tracing::info!(task = %name, %error, "the task failed while stopping");
            break;
        }
        if started.elapsed() >= LONGEST_PAUSE {
            pause = FIRST_PAUSE;
        }
        tracing::error!(task = %name, %error, retry_in_ms = pause.as_millis(), "the task failed");
        health.set_task(name, TaskState::Restarting { restarts, error });
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.stopped() => break,
        }
        pause = (pause * 2).min(LONGEST_PAUSE);
        restarts += 1;
    }
    health.set_task(name, TaskState::Ended);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::error::BridgeError;

    /// Time is a source of non-determinism: these tests run on tokio's paused clock, which
    /// moves on by itself when every task waits.
    #[tokio::test(start_paused = true)]
    async fn a_failing_or_panicking_task_is_started_again_with_growing_pauses() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let task = Task::new("flaky", move |mut stop: Stop| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Err(BridgeError::new("connection refused")),
                    1 => panic!("the remote sent nonsense"),
                    _ => {
                        stop.stopped().await;
                        Ok(())
                    }
                }
            }
        });
        let health = Arc::new(Health::default());
        let started = tokio::time::Instant::now();
        let supervisor = Supervisor::start(vec![task], health.clone());
        // First run fails at once; the second starts after 1 s and panics; the third after 2 s.
        tokio::time::sleep(Duration::from_millis(2_900)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(matches!(
            &health.tasks()["flaky"],
            TaskState::Restarting { restarts: 1, error } if error == "the task panicked"
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(health.tasks()["flaky"], TaskState::Running { restarts: 2 });
        assert!(started.elapsed() >= Duration::from_secs(3));
        supervisor.shutdown(Duration::from_secs(5)).await;
        assert_eq!(health.tasks()["flaky"], TaskState::Ended);
        assert_eq!(runs.load(Ordering::SeqCst), 3, "not started again after stopping");
    }

    /// A task told to stop gets the grace period; one that ignores it is aborted after it.
    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_tasks_and_aborts_the_stubborn_ones() {
        let polite = Task::new("polite", |mut stop: Stop| async move {
            stop.stopped().await;
            Ok(())
        });
        let dropped = Arc::new(AtomicU32::new(0));
        struct Guard(Arc<AtomicU32>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let counted = dropped.clone();
        let stubborn = Task::new("stubborn", move |_stop: Stop| {
            let guard = Guard(counted.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        let health = Arc::new(Health::default());
        let supervisor = Supervisor::start(vec![polite, stubborn], health.clone());
        tokio::task::yield_now().await;
        let began = tokio::time::Instant::now();
        supervisor.shutdown(Duration::from_secs(3)).await;
        assert!(began.elapsed() >= Duration::from_secs(3), "waited the grace period");
        tokio::task::yield_now().await;
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "the stubborn task was aborted");
        assert_eq!(health.tasks()["polite"], TaskState::Ended);
    }

    /// A task that returns `Ok` by itself has ended on purpose: it is not started again.
    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_is_not_restarted() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let task = Task::new("once", move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        });
        let health = Arc::new(Health::default());
        let supervisor = Supervisor::start(vec![task], health.clone());
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(health.tasks()["once"], TaskState::Ended);
        supervisor.shutdown(Duration::from_secs(1)).await;
    }
}
