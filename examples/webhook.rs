//! A generic webhooks bridge.
//!
//! Invite the bot to a room and say `!webhook create NAME`: the bot answers with a secret URL.
//! A POST of `{"text": ..., "username": ..., "html"?: ..., "avatar_url"?: "mxc://..."}` to it
//! posts the message in the room from a ghost named after `username` (the framework sanitizes
//! the `html`; `text` and `html` together at most 32 KiB), and answers `{"event_id": ...}`.
//! `!webhook outgoing NAME URL` also posts the room's messages (and their edits and redactions)
//! from real users to URL as JSON. Hooks are kept in the store. `!webhook create NAME as-me`
//! makes a hook that posts as its creator's own Matrix account when the bridge may act as them
//! (double puppeting, see the guide), else as the ghost; a hook never posts as anyone else.
//!
//! Media both ways. A POST may carry an image, `"image": {"data_base64": ..., "content_type":
//! "image/png", "filename"?: ...}` (at most 4 MiB decoded; the `text`, if any, is its caption):
//! it is uploaded (encrypted first when the room is encrypted) and posted as an `m.image`. An
//! image, file, audio or video message from the room goes out with `"media": {"filename",
//! "content_type", "size", "sha256", "data_base64"}`: the bridge downloads (and decrypts) the
//! file, and the hex SHA-256 and the padded base64 are of the file itself. Bad input is
//! answered 400 (413 when too large) with `{"error": ...}` saying what is wrong.
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
    Bridge, BridgeError, BridgeResult, CommandCall, CommandSpec, Context, Delivery, GhostProfile,
    MatrixEdit, MatrixMessage, MatrixRedaction, PortalKey, RemoteEvent, RemoteLoginId,
    RemoteMessageId, RemotePart, RemotePartId, RemoteSender, Secret,
    login::{LoginState, NewLogin},
    secret::sha256_hex,
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomId, UInt,
    events::room::{
        ImageInfo,
        message::{ImageMessageEventContent, MessageType, RoomMessageEventContent},
    },
    serde::{Base64, base64::Standard},
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
    /// The creator's login that the hook posts as, when they asked for it (`as-me`).
    #[serde(default)]
    as_creator: Option<RemoteLoginId>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming {
    /// Who posts (the ghost's name).
    username: String,
    #[serde(default)]
    text: String,
    html: Option<String>,
    avatar_url: Option<String>,
    /// The message's ID, chosen by the poster (a retry with the same ID posts once); default:
    /// a new one, returned in the answer.
    id: Option<String>,
    /// Replace the text of this earlier message instead of posting a new one.
    edits: Option<String>,
    /// Delete this earlier message.
    deletes: Option<String>,
    /// Post an image (the `text`, if any, is its caption).
    image: Option<IncomingImage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncomingImage {
    /// The file, base64 (standard alphabet, padding optional).
    data_base64: String,
    /// Its MIME type: `image/...`.
    content_type: String,
    /// Its name; default: `image`.
    filename: Option<String>,
}

/// The largest image a POST may carry, decoded.
const MAX_IMAGE_BYTES: usize = 4 * 1024 * 1024;
/// The largest `text` plus `html` a POST may carry (a Matrix event is at most 64 KiB).
const MAX_TEXT_BYTES: usize = 32 * 1024;
/// The largest request body: an image of [`MAX_IMAGE_BYTES`] in base64, and room for the rest
/// (escaped text and HTML).
const MAX_BODY_BYTES: usize = MAX_IMAGE_BYTES.div_ceil(3) * 4 + 256 * 1024;

/// How long a POST waits for its message to reach the room before it answers 202.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The webhook bridge.
#[derive(Debug)]
pub struct Webhook {
    ctx: Context,
    public_url: String,
    http: reqwest::Client,
}

const HOOKS: &str = "webhook";

/// A room with webhooks is the portal of a "chat" named after the room itself.
fn portal_key(room: &ruma::RoomId) -> PortalKey {
    PortalKey::shared(room.as_str())
}

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

    /// The login standing for a user's own hooks: a hook made with `as-me` names it as its
    /// sender's login, and the framework posts through that user's double puppet.
    async fn creator_login(&self, user: &ruma::UserId) -> BridgeResult<RemoteLoginId> {
        let id = RemoteLoginId::from(format!("hooks-of:{user}"));
        let login = NewLogin {
            id: id.clone(),
            remote_name: format!("webhooks of {user}"),
            metadata: Value::Null,
        };
        let max = self.ctx.config().logins.max_per_user.max(1);
        match self.ctx.store().add_login(user, &login, LoginState::Connected, max).await? {
            mxbridge::store::AddLogin::Added | mxbridge::store::AddLogin::Replaced => Ok(id),
            other => Err(BridgeError::permanent(format!("cannot record your hooks: {other:?}"))),
        }
    }

    /// The file of a media message, downloaded (and decrypted, from an encrypted room), as the
    /// outgoing hook shows it; `None` for other messages. A failed download fails the handler,
    /// so the inbox retries it.
    async fn media_of(&self, msgtype: &MessageType) -> BridgeResult<Option<Value>> {
        let (source, filename, declared_type) = match msgtype {
            MessageType::Image(m) => {
                (&m.source, m.filename(), m.info.as_ref().and_then(|i| i.mimetype.clone()))
            }
            MessageType::File(m) => {
                (&m.source, m.filename(), m.info.as_ref().and_then(|i| i.mimetype.clone()))
            }
            MessageType::Audio(m) => {
                (&m.source, m.filename(), m.info.as_ref().and_then(|i| i.mimetype.clone()))
            }
            MessageType::Video(m) => {
                (&m.source, m.filename(), m.info.as_ref().and_then(|i| i.mimetype.clone()))
            }
            _ => return Ok(None),
        };
        let (data, served_type) = self.ctx.bot().download_media(source).await?;
        Ok(Some(json!({
            "filename": filename,
            "content_type": declared_type.or(served_type),
            "size": data.len(),
            "sha256": sha256_hex(&data),
            "data_base64": padded_base64(&data),
        })))
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
            CommandSpec::new(
                "create",
                "NAME [as-me]",
                "create a webhook posting to this room (as-me: as your own account)",
            ),
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
                // The room becomes the portal of its own hooks, so its messages reach
                // `handle_message` and their edits and redactions find what they changed.
                let room = &call.event.room_id;
                self.ctx.link_portal(room, &portal_key(room), &call.event.sender).await?;
                let as_creator = match call.args.get(1).map(String::as_str) {
                    None => None,
                    Some("as-me") => Some(self.creator_login(&call.event.sender).await?),
                    Some(other) => return Ok(format!("Unknown option `{other}`: only `as-me`.")),
                };
                let token = Secret::generate(40);
                let hook = Hook {
                    name: name.into(),
                    room_id: call.event.room_id.clone(),
                    outgoing: None,
                    as_creator,
                };
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

    async fn handle_message(&self, msg: &MatrixMessage) -> BridgeResult<Delivery> {
        let mut payload = json!({ "type": "message", "event_id": msg.event.event_id, "sender": msg.sender.user_id, "body": msg.content.body() });
        if let Some(media) = self.media_of(&msg.content.msgtype).await? {
            payload["media"] = media;
        }
        self.post_out(&msg.portal.room_id, payload).await?;
        // Outgoing webhooks have no message IDs of their own: the event ID stands for one, so
        // edits and redactions can name the original.
        Ok(Delivery::sent(msg.event.event_id.as_str()))
    }

    async fn handle_edit(&self, edit: &MatrixEdit) -> BridgeResult<Delivery> {
        let payload = json!({ "type": "edit", "original": edit.target.remote.id, "sender": edit.sender.user_id, "body": edit.new_content.body() });
        self.post_out(&edit.portal.room_id, payload).await?;
        Ok(Delivery::Done)
    }

    async fn handle_redaction(&self, redaction: &MatrixRedaction) -> BridgeResult<Delivery> {
        let payload = json!({ "type": "redaction", "original": redaction.target.remote.id, "sender": redaction.sender.user_id });
        self.post_out(&redaction.portal.room_id, payload).await?;
        Ok(Delivery::Done)
    }

    fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/webhook/{token}", post(incoming))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
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
    if body.username.trim().is_empty() {
        return answer(StatusCode::BAD_REQUEST, "`username` must not be empty");
    }
    if body.deletes.is_none() && body.text.is_empty() && body.image.is_none() {
        return answer(StatusCode::BAD_REQUEST, "`text` must not be empty");
    }
    if body.text.len() + body.html.as_ref().map_or(0, String::len) > MAX_TEXT_BYTES {
        let why = format!("`text` and `html` together must be at most {MAX_TEXT_BYTES} bytes");
        return answer(StatusCode::PAYLOAD_TOO_LARGE, why);
    }
    if body.image.is_some() && (body.edits.is_some() || body.deletes.is_some()) {
        return answer(StatusCode::BAD_REQUEST, "`image` cannot go with `edits` or `deletes`");
    }
    if body.image.is_some() && body.html.is_some() {
        return answer(StatusCode::BAD_REQUEST, "`image` takes `text` as its caption, not `html`");
    }
    let avatar_url = match body.avatar_url.map(ruma::OwnedMxcUri::from) {
        Some(mxc) if mxc.validate().is_err() => {
            return answer(StatusCode::BAD_REQUEST, "`avatar_url` must be an mxc:// URI");
        }
        other => other,
    };
    let sender = RemoteSender {
        id: body.username.as_str().into(),
        profile: GhostProfile { displayname: Some(body.username.clone()), avatar_url },
        // Only the hook's creator, and only when they asked for it.
        login: hook.as_creator.clone(),
    };
    let content = match (body.image, body.html) {
        (Some(image), _) => match image_content(ctx, &hook.room_id, image, body.text).await {
            Ok(content) => content,
            Err(refused) => return refused,
        },
        (None, Some(html)) => RoomMessageEventContent::text_html(body.text, html),
        (None, None) => RoomMessageEventContent::text_plain(body.text),
    };
    let part = RemotePart { id: RemotePartId::default(), content };
    let timestamp = Some(MilliSecondsSinceUnixEpoch::now());
    let id = body.id.map_or_else(RemoteMessageId::random, RemoteMessageId::from);
    let event = match (body.edits, body.deletes) {
        (Some(_), Some(_)) => {
            return answer(StatusCode::BAD_REQUEST, "`edits` and `deletes` exclude each other");
        }
        (Some(target), None) => {
            RemoteEvent::Edit { target: target.into(), sender, timestamp, parts: vec![part] }
        }
        (None, Some(target)) => RemoteEvent::Delete { target: target.into(), sender },
        (None, None) => RemoteEvent::Message {
            id: id.clone(),
            sender,
            timestamp,
            parts: vec![part],
            reply_to: None,
            thread_root: None,
            echo_of: None,
        },
    };
    // Committed once this returns: from here on the message is not lost.
    let queued = match ctx.queue_remote(&portal_key(&hook.room_id), &event).await {
        Ok(queued) => queued,
        Err(e) => return answer(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    match tokio::time::timeout(ANSWER_WITHIN, queued.bridged()).await {
        Ok(Ok(events)) => (StatusCode::OK, Json(json!({ "id": id, "event_id": events.first() }))),
        Ok(Err(e)) => answer(StatusCode::BAD_GATEWAY, e),
        // Still queued: it will be posted.
        Err(_) => (StatusCode::ACCEPTED, Json(json!({ "id": id }))),
    }
}

/// Checks a POSTed image, uploads it for the room (encrypted when the room is) and makes its
/// `m.image`, with `caption` (when not empty) as its body.
async fn image_content(
    ctx: &Context,
    room: &ruma::RoomId,
    image: IncomingImage,
    caption: String,
) -> Result<RoomMessageEventContent, Answer> {
    let bad = |why: &str| answer(StatusCode::BAD_REQUEST, why);
    let data = Base64::<Standard>::parse(image.data_base64.trim())
        .map_err(|e| bad(&format!("`image.data_base64` is not base64: {e}")))?
        .into_inner();
    if data.is_empty() {
        return Err(bad("`image.data_base64` is empty"));
    }
    if data.len() > MAX_IMAGE_BYTES {
        let why = format!("the image is over {MAX_IMAGE_BYTES} bytes");
        return Err(answer(StatusCode::PAYLOAD_TOO_LARGE, why));
    }
    let content_type = image.content_type.trim().to_ascii_lowercase();
    let well_formed = content_type.strip_prefix("image/").is_some_and(|sub| {
        !sub.is_empty() && sub.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    if !well_formed {
        return Err(bad("`image.content_type` must be an image type such as `image/png`"));
    }
    let filename = image.filename.unwrap_or_else(|| "image".to_owned());
    if filename.trim().is_empty() || filename.len() > 255 || filename.contains(['/', '\\']) {
        return Err(bad("`image.filename` must be a plain file name of at most 255 bytes"));
    }
    let size = UInt::new(data.len() as u64);
    let source = ctx
        .bot()
        .upload_media(room, data, &content_type, Some(&filename))
        .await
        .map_err(|e| answer(StatusCode::BAD_GATEWAY, format!("uploading the image: {e}")))?;
    let body = if caption.is_empty() { filename.clone() } else { caption };
    let mut content = ImageMessageEventContent::new(body, source);
    content.filename = Some(filename);
    let mut info = ImageInfo::new();
    info.mimetype = Some(content_type);
    info.size = size;
    content.info = Some(Box::new(info));
    Ok(RoomMessageEventContent::new(MessageType::Image(content)))
}

/// Standard base64 with padding, as most decoders expect it.
fn padded_base64(data: &[u8]) -> String {
    let mut out = Base64::<Standard, &[u8]>::new(data).encode();
    while !out.len().is_multiple_of(4) {
        out.push('=');
    }
    out
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    mxbridge::cli::main::<Webhook>(mxbridge::about!().with_description("A webhooks bridge"))
}
