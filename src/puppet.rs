//! Double puppeting: the bridge acts as a user's own Matrix account, so that what they write on
//! the remote network (from their phone, say) appears in the portal from them, not from a
//! ghost, and is never bridged back.
//!
//! How the bridge may act as a user, in the order it tries:
//! 1. a token the user gave with the `login-matrix` command (checked with `whoami`, stored,
//!    forgotten with `logout-matrix`);
//! 2. `double_puppet.secrets` of the user's server as `as_token:TOKEN`: a second appservice
//!    registration whose user namespace is `@.*:server`, not exclusive, with `url: null`, so
//!    the homeserver pushes nothing to it (`generate-registration --double-puppet` writes it).
//!    Requests carry `?user_id=`. Each secret is checked with `whoami` at start; one the
//!    homeserver refuses is not used.
//!
//! Who is puppeted is decided by the framework, never by what a remote party says: a remote
//! event is sent as a Matrix user only when its [`crate::RemoteSender`] names a login (the
//! bridge saw it come from that login's own account) and the login is that user's. Users below
//! the `user` permission level are never puppeted. Everything a double puppet sends carries
//! [`DOUBLE_PUPPET_SOURCE`] with the registration's ID (its leaves, kicks, bans and invites
//! are sent as member events for that), and events carrying it come back to no handler. Its
//! joins use `/join`, which works across servers but carries no mark: a handler sees them.

use std::sync::{Arc, Mutex, PoisonError};

use ruma::{OwnedServerName, UserId};
use serde::Deserialize;

use crate::{
    commands::{CommandCall, CommandSpec},
    config::{DoublePuppetSecret, PermissionLevel},
    context::Context,
    error::{BridgeError, BridgeResult},
    event::Event,
    intent::{DOUBLE_PUPPET_SOURCE, Intent},
    remote::{RemoteLoginId, RemoteSender},
    store::StoreError,
    util::FastMap,
};

/// What the start-up check found of each `as_token:` secret.
#[derive(Debug, Default)]
pub(crate) struct Puppets {
    /// Servers whose secret the homeserver refused (unknown token): not used until restart.
    refused: Mutex<FastMap<OwnedServerName, String>>,
}

impl Context {
    /// The double puppet of `user_id`: an intent acting as their own account, whose events are
    /// marked as the bridge's, when the bridge may act as them (see the module docs); `None`
    /// otherwise, and the bridge uses a ghost.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn double_puppet(&self, user_id: &UserId) -> Result<Option<Intent>, StoreError> {
        if self.permission_level(user_id) < PermissionLevel::User
            || self.registration().is_user_in_namespace(user_id)
            || user_id == self.bot_user_id()
        {
            return Ok(None);
        }
        let server = user_id.server_name();
        let homeserver = self.homeserver_of(server);
        if homeserver.is_none() && server != self.server_name() {
            return Ok(None);
        }
        let source: Arc<str> = Arc::from(self.appservice().id.as_str());
        let manual = if self.config().double_puppet.allow_manual {
            self.store().user(user_id).await?.and_then(|row| row.double_puppet_token)
        } else {
            None
        };
        let client = match manual {
            Some(token) => self.client().for_user(user_id, token, homeserver.as_ref()),
            None => {
                let Some(DoublePuppetSecret::AsToken(token)) =
                    self.config().double_puppet.secrets.get(server)
                else {
                    return Ok(None);
                };
                if self
                    .puppets()
                    .refused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains_key(server)
                {
                    return Ok(None);
                }
                self.client().for_user_via_appservice(user_id, token.clone(), homeserver.as_ref())
            }
        };
        let intent = client
            .and_then(|c| Intent::new(c, self.store().clone(), user_id.to_owned()))
            .map(|intent| self.equip(intent))
            .map_err(|e| StoreError::Corrupt(format!("double puppet of {user_id}: {e}")))?;
        Ok(Some(intent.double_puppet(source)))
    }

    /// The intent a remote event's sender acts through: the double puppet of the Matrix user
    /// whose login sent it, when there is one, else the sender's ghost (made or updated).
    pub(crate) async fn sender_intent(
        &self,
        sender: &RemoteSender,
    ) -> Result<Intent, crate::portal::RemoteError> {
        if let Some(login) = &sender.login
            && let Some(intent) = Box::pin(self.puppet_of_login(login)).await?
        {
            return Ok(intent);
        }
        self.ensure_ghost(&sender.id, &sender.profile).await
    }

    async fn puppet_of_login(&self, login: &RemoteLoginId) -> Result<Option<Intent>, StoreError> {
        let Some(login) = self.store().login(login).await? else {
            tracing::debug!(%login, "a remote event names a login the bridge does not have");
            return Ok(None);
        };
        self.double_puppet(&login.user_id).await
    }

    /// Checks the token a login's user gave with `login-matrix` (after a send through it
    /// failed): one the homeserver no longer accepts is forgotten, and the user told.
    pub(crate) async fn forget_revoked_puppet_token(&self, login: &RemoteLoginId) {
        let Ok(Some(login)) = self.store().login(login).await else { return };
        let user = &login.user_id;
        let Ok(Some(row)) = self.store().user(user).await else { return };
        let Some(token) = row.double_puppet_token else { return };
        let homeserver = self.homeserver_of(user.server_name());
        let Ok(client) = self.client().for_user(user, token, homeserver.as_ref()) else { return };
        match client.whoami().await {
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 401) => {}
            _ => return,
        }
        tracing::info!(%user, "forgetting a double-puppet token the homeserver no longer accepts");
        if self.store().set_double_puppet_token(user, None).await.is_err() {
            return;
        }
        if let Some(room) = row.management_room {
            let text = "Your homeserver no longer accepts the access token you gave with \
                        `login-matrix`, so I forgot it: what you write on the remote network \
                        appears from your ghost until you give a new one.";
            let _ = self.bot().send_notice(&room, text).await;
        }
    }

    /// The Client-Server API of another homeserver, from `double_puppet.servers`; `None` for
    /// ours (and for servers not listed).
    fn homeserver_of(&self, server: &ruma::ServerName) -> Option<url::Url> {
        if server == self.server_name() {
            return None;
        }
        self.config().double_puppet.servers.get(server).cloned()
    }

    fn puppets(&self) -> &Puppets {
        self.puppets_part().get::<Puppets>()
    }
}

/// Checks each `as_token:` secret with `whoami` (once it is answered at all): a secret the
/// homeserver does not know is logged with what to do and not used.
pub(crate) async fn check_secrets(ctx: Context) {
    for (server, secret) in &ctx.config().double_puppet.secrets {
        let DoublePuppetSecret::AsToken(token) = secret;
        let homeserver = ctx.homeserver_of(server);
        let mut delay = std::time::Duration::from_secs(1);
        loop {
            let client = match ctx.client().for_user(
                ctx.bot_user_id(),
                token.clone(),
                homeserver.as_ref(),
            ) {
                Ok(client) => client,
                Err(e) => {
                    tracing::error!(%server, error = %e, "cannot check the double-puppet secret");
                    break;
                }
            };
            match client.whoami().await {
                Ok(answer) => {
                    tracing::info!(%server, as_user = %answer.user_id, "double puppeting by as_token works");
                    break;
                }
                Err(e) if e.status().is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) => {
                    let why = format!(
                        "the homeserver of {server} does not know the double_puppet.secrets \
                         as_token: add the double-puppet registration (generate-registration \
                         --double-puppet) to its app_service_config_files and restart it"
                    );
                    tracing::error!(%server, error = %e, "{why}");
                    ctx.puppets()
                        .refused
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(server.clone(), why);
                    break;
                }
                Err(e) => {
                    tracing::warn!(%server, error = %e, "checking the double-puppet secret failed; will retry");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(60));
                }
            }
        }
    }
}

/// Whether the event was sent by this bridge's own double puppet (marked with our
/// registration's ID): never new to the bridge.
pub(crate) fn is_our_echo(ctx: &Context, event: &Event) -> bool {
    let content = event.content_json().unwrap_or_else(|| event.json());
    if !content.contains(DOUBLE_PUPPET_SOURCE) {
        return false;
    }
    #[derive(Deserialize)]
    struct Marked {
        #[serde(rename = "fi.mau.double_puppet_source")]
        source: Option<String>,
    }
    event.content::<Marked>().ok().and_then(|m| m.source).as_deref()
        == Some(ctx.appservice().id.as_str())
}

/// The double-puppeting commands, when users may give their own token.
pub(crate) fn specs(ctx: &Context) -> Vec<CommandSpec> {
    if !ctx.config().double_puppet.allow_manual {
        return Vec::new();
    }
    vec![
        CommandSpec::new(
            "login-matrix",
            "ACCESS_TOKEN",
            "let the bridge post what you write on the remote network as your Matrix account",
        ),
        CommandSpec::new("logout-matrix", "", "forget the access token you gave with login-matrix"),
    ]
}

/// Runs a double-puppeting command; `None` when `call` is none of them.
pub(crate) async fn run(ctx: &Context, call: &CommandCall) -> Option<BridgeResult<String>> {
    Some(match call.name.as_str() {
        "login-matrix" => login_matrix(ctx, call).await,
        "logout-matrix" => logout_matrix(ctx, &call.event.sender).await,
        _ => return None,
    })
}

async fn login_matrix(ctx: &Context, call: &CommandCall) -> BridgeResult<String> {
    let user = &call.event.sender;
    if !ctx.config().double_puppet.allow_manual {
        return Err(BridgeError::permanent("this bridge does not take access tokens"));
    }
    // A token is a password: the message is redacted wherever it was sent, and the token is
    // taken only in a DM with the bot.
    let token = crate::Secret::new(call.arg(0, "ACCESS_TOKEN")?);
    if let Err(e) =
        ctx.bot().redact(&call.event.room_id, &call.event.event_id).reason("access token").await
    {
        tracing::warn!(error = %e, "could not redact the message with the access token");
    }
    if call.portal.is_some() || !crate::commands::is_management_room(ctx, &call.event).await? {
        return Ok("Send `login-matrix` in a private chat with me (a room with only you and me), \
                   not here, and get a new token: this one was seen by the room."
            .into());
    }
    // Where the user is told if the token stops working.
    ctx.store().set_management_room(user, Some(&call.event.room_id)).await?;
    let server = user.server_name();
    let homeserver = ctx.homeserver_of(server);
    if homeserver.is_none() && server != ctx.server_name() {
        return Ok(format!(
            "I don't know the homeserver of {server}: the bridge's operator can add it to \
             `double_puppet.servers`."
        ));
    }
    let client = ctx
        .client()
        .for_user(user, token.clone(), homeserver.as_ref())
        .map_err(|e| BridgeError::new(format!("cannot reach your homeserver: {e}")))?;
    match client.whoami().await {
        Ok(answer) if answer.user_id == *user => {}
        Ok(answer) => {
            return Ok(format!(
                "That token belongs to {}, not to you: it was not stored.",
                answer.user_id
            ));
        }
        Err(e) if e.status().is_some_and(|s| s.as_u16() == 401) => {
            return Ok("Your homeserver does not accept that token: it was not stored.".into());
        }
        Err(e) => return Err(BridgeError::new(format!("could not check the token: {e}"))),
    }
    ctx.store().set_double_puppet_token(user, Some(&token)).await?;
    Ok("Done: what you write on the remote network now appears from your Matrix account.".into())
}

async fn logout_matrix(ctx: &Context, user: &UserId) -> BridgeResult<String> {
    let had = ctx.store().user(user).await?.is_some_and(|row| row.double_puppet_token.is_some());
    ctx.store().set_double_puppet_token(user, None).await?;
    Ok(if had {
        "Your access token is forgotten: what you write on the remote network appears from \
         your ghost again."
            .into()
    } else {
        "I had no access token of yours.".into()
    })
}

#[cfg(test)]
mod tests;
