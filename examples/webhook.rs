//! A generic webhooks bridge.
//!
//! Invite the bot to a room and say `!webhook create NAME`: the bot answers with a secret URL.
//! A POST of `{"text": ..., "username": ..., "html"?: ..., "avatar_url"?: "mxc://..."}` to it
//! posts the message in the room from a ghost named after `username` (the framework sanitizes
//! the `html`), and answers `{"event_id": ...}`. `!webhook outgoing NAME URL` also posts the
//! room's messages (and their edits and redactions) from real users to URL as JSON. Hooks are
//! kept in the store.
//!
//! Run with `scripts/demo.sh`, or `cargo run --example webhook -- -c config.yaml run`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, State, rejection::JsonRejection},
    http::StatusCode,
    routing::post,
};
use mxbridge::{
    Bridge, BridgeError, BridgeResult, CommandCall, CommandSpec, Context, GhostProfile, MatrixEdit,
    MatrixMessage, MatrixRedaction, RemoteMessage, RemoteMessageId, Secret, secret::sha256_hex,
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomId, events::room::message::RoomMessageEventContent,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The `bridge:` section of the config.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The base URL people POST to; default: the appservice's own address.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// A hook, stored under the SHA-256 of its secret token (the token itself is never stored).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hook {
    name: String,
    room_id: OwnedRoomId,
    outgoing: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming {
    text: String,
    username: String,
    html: Option<String>,
    avatar_url: Option<String>,
}

/// The webhook bridge.
#[derive(Debug)]
pub struct Webhook {
    ctx: Context,
    public_url: String,
    http: reqwest::Client,
}

const HOOKS: &str = "webhook";

impl Webhook {
    async fn hooks_in(&self, room: &ruma::RoomId) -> BridgeResult<Vec<(String, Hook)>> {
        let all = self.ctx.store().kv_list_json::<Hook>(HOOKS).await?;
        Ok(all.into_iter().filter(|(_, h)| h.room_id == room).collect())
    }

    async fn hook_named(&self, call: &CommandCall) -> BridgeResult<(String, Hook)> {
        let name = call.arg(0, "NAME")?;
        let found =
            self.hooks_in(&call.event.room_id).await?.into_iter().find(|(_, h)| h.name == name);
        found.ok_or_else(|| BridgeError::new(format!("no webhook `{name}` here")))
    }

    /// Sends a room's event to every outgoing URL of the room; a failed POST is retried by the
    /// inbox (the handler returns the error).
    async fn post_out(&self, room: &ruma::RoomId, payload: Value) -> BridgeResult {
        for (_, hook) in self.hooks_in(room).await? {
            if let Some(url) = &hook.outgoing {
                let body = json!({ "webhook": hook.name, "room_id": room, "event": payload });
                self.http.post(url).json(&body).send().await?.error_for_status()?;
            }
        }
        Ok(())
    }
}

impl Bridge for Webhook {
    type Config = WebhookConfig;
    const NAME: &'static str = "webhook";

    fn example_config() -> &'static str {
        "  # The base URL people POST to (default: appservice.address).\n  public_url: null\n"
    }

    async fn create(config: WebhookConfig, ctx: Context) -> BridgeResult<Self> {
        let public_url = config.public_url.unwrap_or_else(|| ctx.appservice().address.to_string());
        mxbridge::install_crypto_provider();
        Ok(Self {
            public_url: public_url.trim_end_matches('/').to_owned(),
            ctx,
            http: reqwest::Client::new(),
        })
    }

    fn commands(&self) -> Vec<CommandSpec> {
        vec![
            CommandSpec::new("create", "NAME", "create a webhook posting to this room"),
            CommandSpec::new("list", "", "list this room's webhooks"),
            CommandSpec::new("delete", "NAME", "revoke a webhook"),
            CommandSpec::new("outgoing", "NAME URL", "also POST this room's messages to URL"),
        ]
    }

    async fn handle_command(&self, call: &CommandCall) -> BridgeResult<String> {
        let store = self.ctx.store();
        match call.name.as_str() {
            "create" => {
                let name = call.arg(0, "NAME")?;
                if self.hooks_in(&call.event.room_id).await?.iter().any(|(_, h)| h.name == name) {
                    return Ok(format!("A webhook `{name}` exists here already."));
                }
                let token = Secret::generate(40);
                let hook =
                    Hook { name: name.into(), room_id: call.event.room_id.clone(), outgoing: None };
                store.kv_put_json(HOOKS, &sha256_hex(token.expose().as_bytes()), &hook).await?;
                Ok(format!(
                    "Webhook `{name}` created. POST JSON to {}/webhook/{}",
                    self.public_url,
                    token.expose()
                ))
            }
            "list" => {
                let mut out = String::from("Webhooks in this room:");
                for (_, hook) in self.hooks_in(&call.event.room_id).await? {
                    let outgoing = hook.outgoing.map(|u| format!(" → {u}")).unwrap_or_default();
                    out.push_str(&format!("\n- `{}`{outgoing}", hook.name));
                }
                Ok(out)
            }
            "delete" => {
                let (key, hook) = self.hook_named(call).await?;
                store.kv_delete(HOOKS, &key).await?;
                Ok(format!("Webhook `{}` deleted; its URL no longer works.", hook.name))
            }
            "outgoing" => {
                let (key, mut hook) = self.hook_named(call).await?;
                let url = call.arg(1, "URL")?;
                url::Url::parse(url).map_err(|e| BridgeError::new(format!("not a URL: {e}")))?;
                hook.outgoing = Some(url.into());
                store.kv_put_json(HOOKS, &key, &hook).await?;
                Ok(format!("Messages of this room now go to {url}."))
            }
            _ => Err(BridgeError::permanent("unknown command")),
        }
    }

    async fn handle_message(&self, msg: &MatrixMessage) -> BridgeResult {
        let payload = json!({ "type": "message", "event_id": msg.event.event_id, "sender": msg.event.sender, "body": msg.content.body() });
        self.post_out(&msg.event.room_id, payload).await?;
        // Remember it as delivered, so edits and redactions can name the original.
        let chat = msg.event.room_id.as_str().into();
        self.ctx
            .record_remote_message(&chat, &msg.event.event_id.as_str().into(), &msg.event)
            .await?;
        Ok(())
    }

    async fn handle_edit(&self, edit: &MatrixEdit) -> BridgeResult {
        let Some((_, original)) = &edit.target_remote else { return Ok(()) };
        let payload = json!({ "type": "edit", "original": original, "sender": edit.event.sender, "body": edit.new_content.body() });
        self.post_out(&edit.event.room_id, payload).await
    }

    async fn handle_redaction(&self, redaction: &MatrixRedaction) -> BridgeResult {
        let Some((_, original)) = &redaction.target_remote else { return Ok(()) };
        let payload =
            json!({ "type": "redaction", "original": original, "sender": redaction.event.sender });
        self.post_out(&redaction.event.room_id, payload).await
    }

    fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/webhook/{token}", post(incoming))
            .layer(DefaultBodyLimit::max(64 * 1024))
            .with_state(self.clone())
    }
}

type Answer = (StatusCode, Json<Value>);

fn answer(status: StatusCode, error: impl std::fmt::Display) -> Answer {
    (status, Json(json!({ "error": error.to_string() })))
}

/// `POST /webhook/{token}`: posts the message as a ghost named after `username`.
async fn incoming(
    State(bridge): State<Arc<Webhook>>,
    Path(token): Path<String>,
    body: Result<Json<Incoming>, JsonRejection>,
) -> Answer {
    let ctx = &bridge.ctx;
    let hook = match ctx.store().kv_get_json::<Hook>(HOOKS, &sha256_hex(token.as_bytes())).await {
        Ok(Some(hook)) => hook,
        Ok(None) => return answer(StatusCode::NOT_FOUND, "unknown or revoked webhook"),
        Err(e) => return answer(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return answer(rejection.status(), rejection.body_text()),
    };
    if body.username.trim().is_empty() || body.text.is_empty() {
        return answer(StatusCode::BAD_REQUEST, "`username` and `text` must not be empty");
    }
    let avatar_url = match body.avatar_url.map(ruma::OwnedMxcUri::from) {
        Some(mxc) if mxc.validate().is_err() => {
            return answer(StatusCode::BAD_REQUEST, "`avatar_url` must be an mxc:// URI");
        }
        other => other,
    };
    let content = match body.html {
        Some(html) => RoomMessageEventContent::text_html(body.text, html),
        None => RoomMessageEventContent::text_plain(body.text),
    };
    let message = RemoteMessage {
        chat: hook.room_id.as_str().into(),
        id: RemoteMessageId::random(),
        sender: body.username.as_str().into(),
        profile: GhostProfile { displayname: Some(body.username.clone()), avatar_url },
        timestamp: Some(MilliSecondsSinceUnixEpoch::now()),
        content,
    };
    match ctx.bridge_message(&hook.room_id, &message).await {
        Ok(event_id) => (StatusCode::OK, Json(json!({ "event_id": event_id }))),
        Err(e) => answer(StatusCode::BAD_GATEWAY, e),
    }
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    mxbridge::cli::main::<Webhook>(mxbridge::about!().with_description("A webhooks bridge"))
}
