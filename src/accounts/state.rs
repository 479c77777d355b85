//! Per-login connection states: stored, told to the user when they must act, and pushed to
//! the configured status endpoint in the `com.beeper.bridge_state` shape.

use ruma::events::room::message::RoomMessageEventContent;

use super::{LoginState, UserLogin};
use crate::{context::Context, remote::RemoteLoginId};

/// How long a pushed state holds before the receiver should consider it stale, in seconds.
const STATE_TTL_SECS: u64 = 3600;

impl Context {
    /// Reports a login's connection state (with a reason for the error states). The bridge
    /// calls this when its connection changes: `TransientDisconnect` while it retries,
    /// `BadCredentials` when the network refuses the login, `LoggedOut` when the network
    /// ended the session. A change is stored, pushed to `logins.status_endpoint`, logged, and,
    /// for `BadCredentials` and `LoggedOut`, told to the user in their management room.
    /// Errors are logged, never returned: reporting must not fail the caller.
    pub async fn set_login_state(
        &self,
        id: &RemoteLoginId,
        state: LoginState,
        reason: Option<&str>,
    ) {
        let old = match self.store().set_login_state(id, state, reason).await {
            Ok(Some(old)) => old,
            Ok(None) => {
                tracing::debug!(login = %id, %state, "state of an unknown login");
                return;
            }
            Err(e) => {
                tracing::warn!(login = %id, %state, error = %e, "could not store a login's state");
                return;
            }
        };
        if old != state {
            let labels = vec![("state", state.as_str().to_owned())];
            self.metrics().login_states.get_or_create(&labels).inc();
        }
        let Ok(Some(login)) = self.store().login(id).await else { return };
        tracing::info!(login = %id, user = %login.user_id, from = %old, to = %state, reason, "login state");
        if old == state && state != LoginState::Connected {
            // Same state again (a new reason): pushed, not told twice.
            self.push_login_state(&login, state, reason).await;
            return;
        }
        if old != state && state.needs_user() {
            let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
            let text = match state {
                LoginState::BadCredentials => format!(
                    "⚠️ The network refused your login **{}**{why}. Log in again with `login`.",
                    login_name(&login)
                ),
                _ => format!(
                    "⚠️ Your login **{}** was logged out{why}. Log in again with `login`.",
                    login_name(&login)
                ),
            };
            self.tell_user(&login.user_id, &text).await;
        }
        self.push_login_state(&login, state, reason).await;
    }

    /// Posts a notice to a user's management room, if they have one. Best effort.
    pub(crate) async fn tell_user(&self, user_id: &ruma::UserId, markdown: &str) {
        let room = match self.store().user(user_id).await {
            Ok(Some(user)) => user.management_room,
            _ => None,
        };
        let Some(room) = room else {
            tracing::info!(user = %user_id, "no management room to tell the user: {markdown}");
            return;
        };
        let content = RoomMessageEventContent::notice_markdown(markdown);
        if let Err(e) = self.bot().send(&room, &content).await {
            tracing::warn!(user = %user_id, error = %e, "could not tell the user");
        }
    }

    /// POSTs a login's state to `logins.status_endpoint`, when one is set. Best effort: a
    /// failure is logged.
    pub(crate) async fn push_login_state(
        &self,
        login: &UserLogin,
        state: LoginState,
        reason: Option<&str>,
    ) {
        let Some(endpoint) = self.config().logins.status_endpoint.clone() else { return };
        let body = bridge_state_body(login, state, reason);
        let token = self.registration().file().as_token.expose().to_owned();
        let request = self.logins().http().post(endpoint).bearer_auth(token).json(&body);
        match request.send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                tracing::warn!(status = %r.status(), "the status endpoint refused a login state")
            }
            Err(e) => tracing::warn!(error = %e, "could not push a login state"),
        }
    }
}

/// A login's name for its user: the remote name, else the ID.
pub(crate) fn login_name(login: &UserLogin) -> &str {
    if login.remote_name.is_empty() { login.id.as_str() } else { &login.remote_name }
}

/// The `com.beeper.bridge_state` body of a login's state.
pub(crate) fn bridge_state_body(
    login: &UserLogin,
    state: LoginState,
    reason: Option<&str>,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "state_event": state.as_str(),
        "timestamp": crate::util::now_ms() / 1000,
        "ttl": STATE_TTL_SECS,
        "source": "bridge",
        "user_id": login.user_id,
        "remote_id": login.id,
        "remote_name": login.remote_name,
    });
    if let Some(reason) = reason {
        body["message"] = reason.into();
        if !matches!(state, LoginState::Connected | LoginState::Connecting | LoginState::Starting) {
            body["error"] = state.as_str().to_lowercase().into();
        }
    }
    body
}
