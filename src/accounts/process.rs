//! Logins in progress: each runs in a task of its own that owns the bridge's
//! [`AnyLoginProcess`] and publishes where it stands. Bot commands and the provisioning API
//! drive the same task, so a flow reaches the same state whichever way it is driven.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock, PoisonError, Weak},
    time::Duration,
};

use ruma::{OwnedUserId, UserId};
use tokio::sync::{mpsc, watch};

use super::{AnyLoginProcess, LoginFlow, LoginStep, LoginValues, UserLogin};
use crate::{
    bridge::Bridge,
    context::Context,
    error::BridgeResult,
    remote::{NewChat, NewGroup, RemoteLoginId, ResolvedIdentifier},
    store::{AddLogin, StoreError},
};

/// The most logins one user may have in progress at once.
const MAX_IN_PROGRESS: usize = 3;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The bridge's login methods, without its type: the login machinery and the provisioning
/// API are not generic.
pub(crate) trait LoginHooks: Send + Sync + 'static {
    fn flows(&self) -> Vec<LoginFlow>;
    fn create<'a>(
        &'a self,
        flow_id: &'a str,
        user_id: &'a UserId,
    ) -> BoxFuture<'a, BridgeResult<Box<dyn AnyLoginProcess>>>;
    fn connect<'a>(&'a self, login: &'a UserLogin) -> BoxFuture<'a, BridgeResult>;
    fn logout<'a>(&'a self, login: &'a UserLogin) -> BoxFuture<'a, BridgeResult>;
    fn resolve_identifier<'a>(
        &'a self,
        login: &'a UserLogin,
        identifier: &'a str,
        create_dm: bool,
    ) -> BoxFuture<'a, BridgeResult<Option<ResolvedIdentifier>>>;
    fn create_group<'a>(
        &'a self,
        login: &'a UserLogin,
        group: &'a NewGroup,
    ) -> BoxFuture<'a, BridgeResult<NewChat>>;
}

impl<B: Bridge> LoginHooks for B {
    fn flows(&self) -> Vec<LoginFlow> {
        self.login_flows()
    }
    fn create<'a>(
        &'a self,
        flow_id: &'a str,
        user_id: &'a UserId,
    ) -> BoxFuture<'a, BridgeResult<Box<dyn AnyLoginProcess>>> {
        Box::pin(self.create_login(flow_id, user_id))
    }
    fn connect<'a>(&'a self, login: &'a UserLogin) -> BoxFuture<'a, BridgeResult> {
        Box::pin(self.connect_login(login))
    }
    fn logout<'a>(&'a self, login: &'a UserLogin) -> BoxFuture<'a, BridgeResult> {
        Box::pin(self.logout(login))
    }
    fn resolve_identifier<'a>(
        &'a self,
        login: &'a UserLogin,
        identifier: &'a str,
        create_dm: bool,
    ) -> BoxFuture<'a, BridgeResult<Option<ResolvedIdentifier>>> {
        Box::pin(Bridge::resolve_identifier(self, login, identifier, create_dm))
    }
    fn create_group<'a>(
        &'a self,
        login: &'a UserLogin,
        group: &'a NewGroup,
    ) -> BoxFuture<'a, BridgeResult<NewChat>> {
        Box::pin(Bridge::create_group(self, login, group))
    }
}

/// Where a login in progress stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStatus {
    /// The bridge is working on the last answer.
    Working,
    /// Waiting for the user (or, for a display-and-wait step, for the network).
    Step(LoginStep),
    /// Logged in: the login is stored.
    Done(UserLogin),
    /// Ended with an error; the user may start again.
    Failed(String),
    /// Cancelled by the user, or dropped after `logins.timeout_secs` without an answer.
    Cancelled,
}

impl LoginStatus {
    /// Whether the login is over.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Done(_) | Self::Failed(_) | Self::Cancelled)
    }
}

/// Why a login request was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The bridge offers no such flow, or has no logins at all.
    #[error("unknown login flow {0:?}")]
    UnknownFlow(String),
    /// No such login process (or login) of this user.
    #[error("{0}")]
    NotFound(String),
    /// The answer does not fit the step.
    #[error("{0}")]
    BadInput(String),
    /// The user may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The bridge failed.
    #[error("{0}")]
    Bridge(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A login in progress.
#[derive(Debug)]
struct Running {
    user_id: OwnedUserId,
    flow_id: String,
    /// Numbered, so a waiter can tell a new status from the one it saw.
    status: watch::Receiver<(u64, LoginStatus)>,
    input: mpsc::Sender<Input>,
}

#[derive(Debug)]
enum Input {
    /// Values for the step published with this number (an answer to an older step, sent
    /// at the same time as another one, is dropped).
    Submit(u64, LoginValues),
    Cancel,
}

/// The logins in progress, and the bridge's login methods. One per [`Context`].
#[derive(Default)]
pub(crate) struct Logins {
    hooks: OnceLock<Weak<dyn LoginHooks>>,
    /// Whether the bridge declared flows, decided once at assembly (asked per message).
    enabled: OnceLock<bool>,
    running: Mutex<crate::util::FastMap<String, Arc<Running>>>,
    /// Logins driven from a room with the bot's commands, by user.
    pub(crate) chats: Mutex<crate::util::FastMap<OwnedUserId, super::commands::ChatLogin>>,
    /// For the status pushes and the provisioning API's `whoami`.
    http: OnceLock<reqwest::Client>,
}

impl Context {
    /// Logins in progress, and the bridge's login methods.
    pub(crate) fn logins(&self) -> &Logins {
        self.logins_part().get()
    }
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins").finish_non_exhaustive()
    }
}

impl Logins {
    pub(crate) fn hooks(&self) -> Option<Arc<dyn LoginHooks>> {
        self.hooks.get().and_then(Weak::upgrade)
    }

    /// Whether the bridge offers logins (it declared flows).
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.get().copied().unwrap_or(false)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            crate::install_crypto_provider();
            reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("an HTTP client with a timeout builds")
        })
    }

    fn get(&self, process_id: &str) -> Option<Arc<Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).get(process_id).cloned()
    }

    fn remove(&self, process_id: &str) {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(process_id);
    }
}

/// A login in progress as its driver sees it.
#[derive(Debug, Clone)]
pub struct LoginProgress {
    /// The process's ID (in the provisioning API's paths).
    pub process_id: String,
    /// Its status, numbered.
    pub seq: u64,
    /// Where it stands.
    pub status: LoginStatus,
}

impl Context {
    /// Lets the login machinery reach the bridge's login methods (once, at assembly).
    pub(crate) fn attach_bridge<B: Bridge>(&self, bridge: &Arc<B>) {
        let weak: Weak<dyn LoginHooks> = Arc::downgrade(bridge) as Weak<dyn LoginHooks>;
        let _ = self.logins().enabled.set(!bridge.login_flows().is_empty());
        let _ = self.logins().hooks.set(weak);
    }

    /// The login flows the bridge offers (none when it has no logins).
    pub fn login_flows(&self) -> Vec<LoginFlow> {
        self.logins().hooks().map(|h| h.flows()).unwrap_or_default()
    }

    /// Starts a login of `user_id` with a flow, and waits for its first step.
    ///
    /// # Errors
    /// When there is no such flow, or the bridge cannot start the login.
    pub async fn start_login(
        &self,
        user_id: &UserId,
        flow_id: &str,
    ) -> Result<LoginProgress, LoginError> {
        let hooks = self.logins().hooks().ok_or_else(|| LoginError::UnknownFlow(flow_id.into()))?;
        if !hooks.flows().iter().any(|f| f.id == flow_id) {
            return Err(LoginError::UnknownFlow(flow_id.into()));
        }
        if self.logins_in_progress(user_id).len() >= MAX_IN_PROGRESS {
            return Err(LoginError::Forbidden(format!(
                "you have {MAX_IN_PROGRESS} logins in progress already: finish or cancel one"
            )));
        }
        let process =
            hooks.create(flow_id, user_id).await.map_err(|e| LoginError::Bridge(e.to_string()))?;
        let process_id = crate::util::random_id(20);
        let (status_tx, status) = watch::channel((0, LoginStatus::Working));
        let (input, input_rx) = mpsc::channel(4);
        let running = Arc::new(Running {
            user_id: user_id.to_owned(),
            flow_id: flow_id.to_owned(),
            status,
            input,
        });
        self.logins()
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(process_id.clone(), running.clone());
        tokio::spawn(drive(
            self.clone(),
            process_id.clone(),
            user_id.to_owned(),
            process,
            status_tx,
            input_rx,
        ));
        self.next_status(&process_id, &running, 0, None).await
    }

    /// The status of a login in progress of `user_id`, without waiting.
    ///
    /// # Errors
    /// When the user has no such login in progress.
    pub fn login_progress(
        &self,
        user_id: &UserId,
        process_id: &str,
    ) -> Result<LoginProgress, LoginError> {
        let running = self.running_of(user_id, process_id)?;
        let (seq, status) = running.status.borrow().clone();
        Ok(LoginProgress { process_id: process_id.to_owned(), seq, status })
    }

    fn running_of(&self, user_id: &UserId, process_id: &str) -> Result<Arc<Running>, LoginError> {
        self.logins()
            .get(process_id)
            .filter(|r| r.user_id == user_id)
            .ok_or_else(|| LoginError::NotFound("no such login in progress".into()))
    }

    /// Answers the fields or cookies step `step_id` of a login in progress, and waits for
    /// the next step. Every field's value is checked first; a bad one leaves the step as it is.
    ///
    /// # Errors
    /// When there is no such login, the step is not the current one, or a value is bad.
    pub async fn submit_login(
        &self,
        user_id: &UserId,
        process_id: &str,
        step_id: &str,
        values: LoginValues,
    ) -> Result<LoginProgress, LoginError> {
        let running = self.running_of(user_id, process_id)?;
        let (seq, status) = running.status.borrow().clone();
        let LoginStatus::Step(step) = status else {
            return Err(LoginError::BadInput("the login is not waiting for an answer".into()));
        };
        if step.step_id() != step_id {
            return Err(LoginError::BadInput(format!(
                "the login is at step {:?}, not {step_id:?}",
                step.step_id()
            )));
        }
        let values = check_values(&step, values)?;
        running
            .input
            .send(Input::Submit(seq, values))
            .await
            .map_err(|_| LoginError::NotFound("the login ended".into()))?;
        // Bounded: an answer that lost a race with another one is dropped by the login.
        let bound = Duration::from_secs(self.config().logins.timeout_secs.max(1));
        self.next_status(process_id, &running, seq, Some(bound)).await
    }

    /// Waits (at most `timeout`) for a display-and-wait step `step_id` to end, and returns
    /// the status then: the same step when the time ran out.
    ///
    /// # Errors
    /// When there is no such login, or the step is not the current one.
    pub async fn wait_login(
        &self,
        user_id: &UserId,
        process_id: &str,
        step_id: &str,
        timeout: Duration,
    ) -> Result<LoginProgress, LoginError> {
        let running = self.running_of(user_id, process_id)?;
        let (seq, status) = running.status.borrow().clone();
        match &status {
            LoginStatus::Step(step @ LoginStep::DisplayAndWait { .. })
                if step.step_id() == step_id => {}
            LoginStatus::Working => {}
            _ => {
                return Err(LoginError::BadInput(format!(
                    "the login is not waiting at step {step_id:?}"
                )));
            }
        }
        self.next_status(process_id, &running, seq, Some(timeout)).await
    }

    /// Cancels a login in progress.
    ///
    /// # Errors
    /// When the user has no such login in progress.
    pub async fn cancel_login(&self, user_id: &UserId, process_id: &str) -> Result<(), LoginError> {
        let running = self.running_of(user_id, process_id)?;
        let _ = running.input.send(Input::Cancel).await;
        self.logins().remove(process_id);
        Ok(())
    }

    /// The logins in progress of a user: (process ID, flow ID).
    pub fn logins_in_progress(&self, user_id: &UserId) -> Vec<(String, String)> {
        let running = self.logins().running.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = running
            .iter()
            .filter(|(_, r)| r.user_id == user_id)
            .map(|(id, r)| (id.clone(), r.flow_id.clone()))
            .collect();
        out.sort();
        out
    }

    /// Waits for a status after `seen` (or returns the current one when it is newer), at most
    /// `timeout` when given; then the current one.
    async fn next_status(
        &self,
        process_id: &str,
        running: &Running,
        seen: u64,
        timeout: Option<Duration>,
    ) -> Result<LoginProgress, LoginError> {
        let mut rx = running.status.clone();
        // Past `Working`: the answer is a step or the end.
        let wait = rx.wait_for(|(seq, status)| *seq > seen && *status != LoginStatus::Working);
        let (seq, status) = match timeout {
            Some(t) => match tokio::time::timeout(t, wait).await {
                Ok(Ok(s)) => s.clone(),
                Ok(Err(_)) => running.status.borrow().clone(),
                Err(_) => running.status.borrow().clone(),
            },
            None => match wait.await {
                Ok(s) => s.clone(),
                Err(_) => running.status.borrow().clone(),
            },
        };
        Ok(LoginProgress { process_id: process_id.to_owned(), seq, status })
    }

    /// Logs a user's login out: the bridge disconnects it, then it is forgotten (with its
    /// portal memberships and relays).
    ///
    /// # Errors
    /// When the user has no such login, or the store fails.
    pub async fn logout(
        &self,
        user_id: &UserId,
        login_id: &RemoteLoginId,
    ) -> Result<(), LoginError> {
        let login = self
            .store()
            .login(login_id)
            .await?
            .filter(|l| l.user_id == user_id)
            .ok_or_else(|| LoginError::NotFound(format!("you have no login {login_id}")))?;
        if let Some(hooks) = self.logins().hooks()
            && let Err(e) = hooks.logout(&login).await
        {
            tracing::warn!(login = %login.id, error = %e, "the bridge failed to log out; forgetting the login anyway");
        }
        let space = self.store().login_space(login_id).await?;
        self.store().delete_login(login_id).await?;
        if let Some(space) = space {
            self.delete_login_space(&space, &login).await;
        }
        let labels = vec![("state", super::LoginState::LoggedOut.as_str().to_owned())];
        self.metrics().login_states.get_or_create(&labels).inc();
        self.push_login_state(&login, super::LoginState::LoggedOut, None).await;
        Ok(())
    }

    /// Connects every stored login that is not logged out or refused: called once at start.
    pub(crate) fn connect_stored_logins(&self) {
        let ctx = self.clone();
        tokio::spawn(async move {
            let logins = match ctx.store().all_logins().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "could not read the stored logins");
                    return;
                }
            };
            for login in logins {
                if login.state.needs_user() {
                    continue;
                }
                // The bridge acts only for users `permissions:` allows now.
                if ctx.permission_level(&login.user_id) < crate::config::PermissionLevel::User {
                    tracing::info!(login = %login.id, user = %login.user_id,
                        "not connecting the login of a user no longer allowed to use the bridge");
                    continue;
                }
                ctx.set_login_state(&login.id, super::LoginState::Starting, None).await;
                let ctx = ctx.clone();
                tokio::spawn(async move { ctx.connect_login_now(login).await });
            }
        });
    }

    /// Asks the bridge to connect a login, reporting `CONNECTING`, then `CONNECTED` (unless
    /// the bridge reported another state meanwhile), or the error: `BAD_CREDENTIALS` for a
    /// permanent one, `UNKNOWN_ERROR` for the others.
    pub(crate) async fn connect_login_now(&self, login: UserLogin) {
        let Some(hooks) = self.logins().hooks() else { return };
        self.set_login_state(&login.id, super::LoginState::Connecting, None).await;
        let outcome = hooks.connect(&login).await;
        let now = self.store().login(&login.id).await.ok().flatten();
        let still_connecting = now.is_some_and(|l| l.state == super::LoginState::Connecting);
        match outcome {
            Ok(()) if still_connecting => {
                self.set_login_state(&login.id, super::LoginState::Connected, None).await;
            }
            Ok(()) => {}
            Err(e) => {
                let state = if e.is_permanent() {
                    super::LoginState::BadCredentials
                } else {
                    super::LoginState::UnknownError
                };
                self.set_login_state(&login.id, state, Some(&e.to_string())).await;
            }
        }
    }
}

/// Checks the values of a fields or cookies step: every field (cookie) present and valid,
/// nothing else.
fn check_values(step: &LoginStep, values: LoginValues) -> Result<LoginValues, LoginError> {
    let known: Vec<&str> = match step {
        LoginStep::Fields { fields, .. } => {
            for field in fields {
                let value = values.get(&field.id).map_or("", String::as_str);
                field.validate(value).map_err(LoginError::BadInput)?;
            }
            fields.iter().map(|f| f.id.as_str()).collect()
        }
        LoginStep::Cookies { cookies, .. } => {
            for cookie in cookies {
                if values.get(cookie).is_none_or(|v| v.trim().is_empty()) {
                    return Err(LoginError::BadInput(format!("the cookie {cookie} is missing")));
                }
            }
            cookies.iter().map(String::as_str).collect()
        }
        _ => return Err(LoginError::BadInput("this step takes no input".into())),
    };
    if let Some(extra) = values.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(LoginError::BadInput(format!("unknown field {extra:?}")));
    }
    Ok(values.into_iter().map(|(k, v)| (k, v.trim().to_owned())).collect())
}

/// The task of one login in progress.
async fn drive(
    ctx: Context,
    process_id: String,
    user_id: OwnedUserId,
    mut process: Box<dyn AnyLoginProcess>,
    status: watch::Sender<(u64, LoginStatus)>,
    mut input: mpsc::Receiver<Input>,
) {
    let timeout = Duration::from_secs(ctx.config().logins.timeout_secs.max(1));
    let mut seq = 0;
    let mut publish = |s: LoginStatus| {
        seq += 1;
        status.send_replace((seq, s));
        seq
    };
    // Runs a step of the process unless the user cancels first.
    macro_rules! or_cancel {
        ($fut:expr) => {{
            let work = $fut;
            tokio::pin!(work);
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    out = &mut work => break Some(out),
                    input = input.recv() => match input {
                        // An answer that lost a race with the one being worked on: dropped.
                        Some(Input::Submit(..)) => {}
                        Some(Input::Cancel) | None => break None,
                    },
                    () = &mut deadline => break None,
                }
            }
        }};
    }
    let mut next = or_cancel!(process.start_boxed());
    let end = loop {
        let Some(step) = next else { break LoginStatus::Cancelled };
        match step {
            Err(e) => break LoginStatus::Failed(e.to_string()),
            Ok(LoginStep::Complete(new)) => break finish(&ctx, &user_id, new).await,
            Ok(step @ LoginStep::DisplayAndWait { .. }) => {
                publish(LoginStatus::Step(step));
                next = or_cancel!(process.wait_boxed());
            }
            Ok(step) => {
                let step_seq = publish(LoginStatus::Step(step));
                let deadline = tokio::time::Instant::now() + timeout;
                let values = loop {
                    let answer = tokio::select! {
                        answer = input.recv() => answer,
                        () = tokio::time::sleep_until(deadline) => None,
                    };
                    match answer {
                        Some(Input::Submit(seq, values)) if seq == step_seq => break Some(values),
                        Some(Input::Submit(..)) => {}
                        Some(Input::Cancel) | None => break None,
                    }
                };
                let Some(values) = values else { break LoginStatus::Cancelled };
                publish(LoginStatus::Working);
                next = or_cancel!(process.submit_boxed(values));
            }
        }
    };
    if end == LoginStatus::Cancelled {
        process.cancel_boxed().await;
    }
    tracing::info!(user = %user_id, process = %process_id, outcome = ?std::mem::discriminant(&end), "login process ended");
    publish(end);
    ctx.logins().remove(&process_id);
}

/// Stores a completed login and connects it.
async fn finish(ctx: &Context, user_id: &UserId, new: super::NewLogin) -> LoginStatus {
    let max = ctx.config().logins.max_per_user;
    let state = super::LoginState::Connecting;
    match ctx.store().add_login(user_id, &new, state, max).await {
        Ok(AddLogin::Added | AddLogin::Replaced) => {}
        Ok(AddLogin::TooMany) => {
            return LoginStatus::Failed(format!(
                "you have {max} login(s) already, the most allowed: log out of one first"
            ));
        }
        Ok(AddLogin::OtherUser(_)) => {
            return LoginStatus::Failed("that account is logged in by another Matrix user".into());
        }
        Err(e) => return LoginStatus::Failed(format!("could not store the login: {e}")),
    }
    let login = match ctx.store().login(&new.id).await {
        Ok(Some(login)) => login,
        Ok(None) => return LoginStatus::Failed("the login vanished".into()),
        Err(e) => return LoginStatus::Failed(format!("could not read the login: {e}")),
    };
    let connecting = ctx.clone();
    let to_connect = login.clone();
    tokio::spawn(async move { connecting.connect_login_now(to_connect).await });
    LoginStatus::Done(login)
}
