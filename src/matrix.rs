//! The Matrix side of the bridge layer: what an incoming event means, and who hears of it.
//!
//! The dispatcher runs `route` for every stored event after the state cache was updated:
//! 1. **Echo suppression**: events sent by our own users (the bot and every ghost) stop here, so
//!    what the bridge itself posted never comes back as new.
//! 2. **Invites** of the bot or a ghost are accepted when [`Bridge::accept_invite`] agrees.
//! 3. **Commands**: a message to the bot (with the prefix, or any message in a DM with the bot)
//!    runs the bridge's command; `help` is generated. Permission levels come from the config.
//! 4. Everything else goes to [`Bridge::handle_event`] and then to the typed method: messages,
//!    edits, reactions, redactions, membership.

use std::borrow::Cow;

use ruma::{
    OwnedEventId, OwnedUserId,
    events::{
        Mentions,
        room::message::{
            EmoteMessageEventContent, MessageType, NoticeMessageEventContent, Relation,
            RoomMessageEventContent, TextMessageEventContent,
        },
    },
};
use serde::Deserialize;

use crate::{
    Context,
    bridge::{Bridge, BridgeError, BridgeResult, Event},
    config::PermissionLevel,
    remote::{Portal, RemoteChatId, RemoteMessageId},
    store::Membership,
};

/// A message sent in a room by a real user.
#[derive(Debug, Clone)]
pub struct MatrixMessage {
    /// The event.
    pub event: Event,
    /// Its content (text, notice, emote, media, ...). For replies, `content.relates_to` says to
    /// what; [`MatrixMessage::reply_to`] has the remote message it answers, when known.
    pub content: RoomMessageEventContent,
    /// The portal of the room, if it is one.
    pub portal: Option<Portal>,
    /// The remote message this one replies to, when known.
    pub reply_to: Option<(RemoteChatId, RemoteMessageId)>,
}

/// An edit of an earlier message.
#[derive(Debug, Clone)]
pub struct MatrixEdit {
    /// The edit event.
    pub event: Event,
    /// The edited event.
    pub target: OwnedEventId,
    /// The remote message the edited event maps to, when known.
    pub target_remote: Option<(RemoteChatId, RemoteMessageId)>,
    /// The new content (`m.new_content`), or the edit's own content when that is missing.
    pub new_content: RoomMessageEventContent,
    /// The portal of the room, if it is one.
    pub portal: Option<Portal>,
}

/// A reaction (`m.reaction` annotation).
#[derive(Debug, Clone)]
pub struct MatrixReaction {
    /// The reaction event.
    pub event: Event,
    /// The event reacted to.
    pub target: OwnedEventId,
    /// The remote message the target maps to, when known.
    pub target_remote: Option<(RemoteChatId, RemoteMessageId)>,
    /// The reaction key (usually an emoji).
    pub key: String,
    /// The portal of the room, if it is one.
    pub portal: Option<Portal>,
}

/// A redaction (deletion) of an earlier event.
#[derive(Debug, Clone)]
pub struct MatrixRedaction {
    /// The redaction event.
    pub event: Event,
    /// The redacted event.
    pub target: OwnedEventId,
    /// The remote message the target maps to, when known.
    pub target_remote: Option<(RemoteChatId, RemoteMessageId)>,
    /// The reason given.
    pub reason: Option<String>,
    /// The portal of the room, if it is one.
    pub portal: Option<Portal>,
}

/// A membership change of anyone in a room (our users' own changes are not reported).
#[derive(Debug, Clone)]
pub struct MatrixMembership {
    /// The `m.room.member` event.
    pub event: Event,
    /// Whose membership changed.
    pub target: OwnedUserId,
    /// The new membership.
    pub membership: Membership,
    /// Whether the target is one of ours (the bot or a ghost).
    pub target_is_ours: bool,
    /// The portal of the room, if it is one.
    pub portal: Option<Portal>,
}

/// Who is typing in a room now (our own users left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixTyping {
    /// The room.
    pub room_id: ruma::OwnedRoomId,
    /// The real users typing; empty when everyone stopped.
    pub user_ids: Vec<OwnedUserId>,
}

/// A read receipt of a real user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixReceipt {
    /// The room.
    pub room_id: ruma::OwnedRoomId,
    /// The event read up to.
    pub event_id: OwnedEventId,
    /// Who read it.
    pub user_id: OwnedUserId,
    /// `m.read` or `m.read.private`.
    pub receipt_type: String,
}

/// A real user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixPresence {
    /// Whose.
    pub user_id: OwnedUserId,
    /// `online`, `unavailable` or `offline`.
    pub presence: String,
    /// The status message.
    pub status_msg: Option<String>,
}

/// Hands one ephemeral event to the bridge: the raw hook, then the typed one (typing, receipts,
/// presence), leaving out what our own users did.
pub(crate) async fn route_ephemeral<B: Bridge>(
    ctx: &Context,
    bridge: &B,
    event: &crate::bridge::EphemeralEvent,
) {
    bridge.handle_ephemeral(event).await;
    let ours = |u: &OwnedUserId| ctx.registration().is_user_in_namespace(u);
    let json: serde_json::Value = serde_json::from_str(event.json.get()).unwrap_or_default();
    match (event.kind.as_str(), &event.room_id) {
        ("m.typing", Some(room_id)) => {
            let user_ids = json["content"]["user_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str().and_then(|u| OwnedUserId::try_from(u).ok()))
                .filter(|u| !ours(u))
                .collect();
            bridge.handle_typing(&MatrixTyping { room_id: room_id.clone(), user_ids }).await;
        }
        ("m.receipt", Some(room_id)) => {
            let Some(by_event) = json["content"].as_object() else { return };
            for (event_id, by_type) in by_event {
                let Ok(event_id) = OwnedEventId::try_from(event_id.as_str()) else { continue };
                for (receipt_type, users) in by_type.as_object().into_iter().flatten() {
                    for user in users.as_object().into_iter().flatten().map(|(u, _)| u) {
                        let Ok(user_id) = OwnedUserId::try_from(user.as_str()) else { continue };
                        if ours(&user_id) {
                            continue;
                        }
                        let receipt = MatrixReceipt {
                            room_id: room_id.clone(),
                            event_id: event_id.clone(),
                            user_id,
                            receipt_type: receipt_type.clone(),
                        };
                        bridge.handle_receipt(&receipt).await;
                    }
                }
            }
        }
        ("m.presence", _) => {
            let Some(user_id) = json["sender"].as_str().and_then(|u| OwnedUserId::try_from(u).ok())
            else {
                return;
            };
            let Some(presence) = json["content"]["presence"].as_str() else { return };
            if !ours(&user_id) {
                let status_msg = json["content"]["status_msg"].as_str().map(str::to_owned);
                let p = MatrixPresence { user_id, presence: presence.to_owned(), status_msg };
                bridge.handle_presence(&p).await;
            }
        }
        _ => {}
    }
}

/// A command a user gave the bot.
#[derive(Debug, Clone)]
pub struct CommandCall {
    /// The message event that carried it.
    pub event: Event,
    /// The command's name.
    pub name: String,
    /// The arguments, split on white space.
    pub args: Vec<String>,
    /// The caller's permission level.
    pub level: PermissionLevel,
    /// The portal of the room, if it is one.
    pub portal: Option<Portal>,
}

impl CommandCall {
    /// The argument at `index`, or an error naming it (`NAME`) when it is missing.
    ///
    /// # Errors
    /// When there are fewer arguments; the message asks for `what`.
    pub fn arg(&self, index: usize, what: &str) -> BridgeResult<&str> {
        self.args
            .get(index)
            .map(String::as_str)
            .ok_or_else(|| BridgeError::new(format!("missing argument {what}")))
    }
}

/// A command the bridge offers.
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    /// Its name (the first word).
    pub name: &'static str,
    /// Its arguments, as shown in `help` (`NAME URL`).
    pub args: &'static str,
    /// One line of help.
    pub help: &'static str,
    /// The lowest level allowed to run it.
    pub level: PermissionLevel,
}

impl CommandSpec {
    /// A command for users of level `user` and up.
    pub const fn new(name: &'static str, args: &'static str, help: &'static str) -> Self {
        Self { name, args, help, level: PermissionLevel::User }
    }

    /// The same command, for `level` and up.
    #[must_use]
    pub const fn level(mut self, level: PermissionLevel) -> Self {
        self.level = level;
        self
    }
}

/// Hands one event to the bridge (see the module docs).
pub(crate) async fn route<B: Bridge>(ctx: &Context, bridge: &B, event: &Event) -> BridgeResult {
    if ctx.registration().is_user_in_namespace(&event.sender) {
        // Echo suppression: our own ghosts' and bot's events are never new to the bridge.
        if event.kind == "m.room.member"
            && event.state_key.as_deref() == Some(event.sender.as_str())
        {
            Box::pin(own_member_event(ctx, event)).await;
        }
        return Ok(());
    }
    let portal = ctx.portal_for_room(&event.room_id).await?;
    match event.kind.as_str() {
        "m.room.member" => {
            // A member event without a user or a known membership still reaches the raw hook.
            let Some(target) =
                event.state_key.as_deref().and_then(|s| OwnedUserId::try_from(s).ok())
            else {
                return bridge.handle_event(event).await;
            };
            let content: serde_json::Value = event.content().unwrap_or_default();
            let Some(membership) =
                content.get("membership").and_then(|m| m.as_str()).and_then(Membership::parse)
            else {
                return bridge.handle_event(event).await;
            };
            let target_is_ours = ctx.registration().is_user_in_namespace(&target);
            let m = MatrixMembership {
                event: event.clone(),
                target,
                membership,
                target_is_ours,
                portal,
            };
            if target_is_ours && membership == Membership::Invite && bridge.accept_invite(&m).await
            {
                // Rare and heavy: boxed, so it does not grow every event's future.
                Box::pin(ctx.intent(&m.target)?.ensure_joined(&event.room_id)).await?;
            }
            bridge.handle_event(event).await?;
            bridge.handle_membership(&m).await
        }
        "m.room.message" => {
            let content = message_content(event).map_err(BridgeError::permanent)?;
            if let Some(Relation::Replacement(replacement)) = &content.relates_to {
                let target = replacement.event_id.clone();
                let target_remote = ctx.remote_message_for(&target).await?;
                let new_content =
                    RoomMessageEventContent::new(replacement.new_content.msgtype.clone());
                bridge.handle_event(event).await?;
                let edit =
                    MatrixEdit { event: event.clone(), target, target_remote, new_content, portal };
                return bridge.handle_edit(&edit).await;
            }
            // A bridge without commands has no command syntax: skip the lookups.
            if !bridge.commands().is_empty()
                && let Some(call) =
                    Box::pin(command_call(ctx, bridge, event, &content, portal.clone())).await?
            {
                return Box::pin(run_command(ctx, bridge, call)).await;
            }
            let reply_to = match &content.relates_to {
                Some(Relation::Reply(reply)) => {
                    ctx.remote_message_for(&reply.in_reply_to.event_id).await?
                }
                _ => None,
            };
            bridge.handle_event(event).await?;
            bridge
                .handle_message(&MatrixMessage { event: event.clone(), content, portal, reply_to })
                .await
        }
        "m.reaction" => {
            let content: serde_json::Value = event.content().unwrap_or_default();
            let relates = &content["m.relates_to"];
            let (Some(target), Some(key)) = (
                relates["event_id"].as_str().and_then(|e| OwnedEventId::try_from(e).ok()),
                relates["key"].as_str(),
            ) else {
                return bridge.handle_event(event).await;
            };
            let target_remote = ctx.remote_message_for(&target).await?;
            bridge.handle_event(event).await?;
            let r = MatrixReaction {
                event: event.clone(),
                target,
                target_remote,
                key: key.to_owned(),
                portal,
            };
            bridge.handle_reaction(&r).await
        }
        "m.room.redaction" => {
            let json: serde_json::Value = serde_json::from_str(event.json()).unwrap_or_default();
            // Room versions up to 10 put `redacts` at the top level, 11 in the content.
            let target = json["content"]["redacts"]
                .as_str()
                .or_else(|| json["redacts"].as_str())
                .and_then(|e| OwnedEventId::try_from(e).ok());
            let Some(target) = target else { return bridge.handle_event(event).await };
            let target_remote = ctx.remote_message_for(&target).await?;
            let reason = json["content"]["reason"].as_str().map(str::to_owned);
            bridge.handle_event(event).await?;
            let r = MatrixRedaction { event: event.clone(), target, target_remote, reason, portal };
            bridge.handle_redaction(&r).await
        }
        _ => bridge.handle_event(event).await,
    }
}

/// The command prefix: configured, or `!` and the bridge's name.
pub(crate) fn command_prefix<B: Bridge>(ctx: &Context) -> String {
    ctx.config().commands.prefix.clone().unwrap_or_else(|| format!("!{}", B::NAME))
}

/// Recognises a command: the prefix followed by white space, or any text in a DM with the bot.
async fn command_call<B: Bridge>(
    ctx: &Context,
    _bridge: &B,
    event: &Event,
    content: &RoomMessageEventContent,
    portal: Option<Portal>,
) -> BridgeResult<Option<CommandCall>> {
    let body = content.body().trim();
    let prefix = command_prefix::<B>(ctx);
    let rest = match body.strip_prefix(prefix.as_str()) {
        Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => rest,
        _ if portal.is_none() && is_management_room(ctx, event).await? => body,
        _ => return Ok(None),
    };
    let mut words = rest.split_whitespace().map(str::to_owned);
    let name = words.next().unwrap_or_else(|| "help".to_owned()).to_lowercase();
    Ok(Some(CommandCall {
        event: event.clone(),
        name,
        args: words.collect(),
        level: ctx.permission_level(&event.sender),
        portal,
    }))
}

/// One of our users joined (by whatever path): the room's members and state are fetched once,
/// so people who were there before are known. A failure is only logged.
async fn own_member_event(ctx: &Context, event: &Event) {
    let room_id = &event.room_id;
    let Ok(joined) = ctx.store().membership(room_id.as_str(), event.sender.as_str()).await else {
        return;
    };
    if joined != Some(Membership::Join) {
        return;
    }
    if let Ok(intent) = ctx.intent(&event.sender)
        && let Err(err) = intent.ensure_room_state(room_id).await
    {
        tracing::warn!(%room_id, error = %err, "could not fetch the room's members and state");
    }
}

/// A DM with the bot: the bot and the sender are the only joined members.
async fn is_management_room(ctx: &Context, event: &Event) -> BridgeResult<bool> {
    let joined = ctx.bot().members_with(&event.room_id, Membership::Join).await?;
    Ok(joined.len() == 2
        && joined.iter().any(|m| m.user_id == ctx.bot_user_id().as_str())
        && joined.iter().any(|m| m.user_id == event.sender.as_str()))
}

/// Runs a command and posts the answer as the bot. Errors of the command itself are answered,
/// not retried.
async fn run_command<B: Bridge>(ctx: &Context, bridge: &B, call: CommandCall) -> BridgeResult {
    let prefix = command_prefix::<B>(ctx);
    let specs = bridge.commands();
    let reply = if call.level == PermissionLevel::None {
        None
    } else if call.name == "help" {
        Some(help_text(&prefix, &specs, call.level))
    } else {
        match specs.iter().find(|s| s.name == call.name) {
            None => Some(format!("Unknown command `{}`. Try `{prefix} help`.", call.name)),
            Some(spec) if spec.level > call.level => {
                Some(format!("You don't have permission to use `{}`.", call.name))
            }
            Some(_) => match bridge.handle_command(&call).await {
                Ok(text) => Some(text),
                Err(e) => Some(format!("`{}` failed: {e}", call.name)),
            },
        }
    };
    if let Some(text) = reply.filter(|t| !t.is_empty()) {
        let content = RoomMessageEventContent::notice_markdown(text);
        ctx.bot().send_message(&call.event.room_id, &content, None).await?;
    }
    Ok(())
}

/// The generated `help`: every command the level may use.
pub fn help_text(prefix: &str, specs: &[CommandSpec], level: PermissionLevel) -> String {
    let mut out = String::from("Commands:\n\n");
    out.push_str(&format!("- `{prefix} help` — show this list\n"));
    for spec in specs.iter().filter(|s| s.level <= level) {
        let args = if spec.args.is_empty() { String::new() } else { format!(" {}", spec.args) };
        out.push_str(&format!("- `{prefix} {}{args}` — {}\n", spec.name, spec.help));
    }
    out
}

/// The typed content of an `m.room.message` event.
///
/// ruma's deserializer reads the content several times over (for the message type, the body
/// and the relation); the most common shape — a text, notice or emote with a plain or HTML
/// body, no relation and at most an empty `m.mentions` — is built directly from one pass
/// instead. Anything else goes to ruma, so the result is the same either way.
pub(crate) fn message_content(event: &Event) -> serde_json::Result<RoomMessageEventContent> {
    let simple = match event.content_json() {
        Some(content) => serde_json::from_str::<SimpleMessage<'_>>(content).ok(),
        None => serde_json::from_str::<Outer<'_>>(event.json()).ok().map(|o| o.content),
    };
    match simple.and_then(simple_message) {
        Some(content) => Ok(content),
        None => event.content(),
    }
}

#[derive(Deserialize)]
struct Outer<'a> {
    #[serde(borrow)]
    content: SimpleMessage<'a>,
}

/// The shape [`message_content`] builds itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimpleMessage<'a> {
    #[serde(borrow)]
    msgtype: Cow<'a, str>,
    #[serde(borrow)]
    body: Cow<'a, str>,
    #[serde(borrow, default)]
    format: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    formatted_body: Option<Cow<'a, str>>,
    #[serde(rename = "m.mentions", default)]
    mentions: Option<NoMentions>,
}

/// Only `{}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoMentions {}

/// `Some` only for the known message types, with plain or HTML bodies.
fn simple_message(c: SimpleMessage<'_>) -> Option<RoomMessageEventContent> {
    let html = match (c.format.as_deref(), c.formatted_body) {
        (None, None) => None,
        (Some("org.matrix.custom.html"), Some(html)) => Some(html.into_owned()),
        _ => return None,
    };
    let body = c.body.into_owned();
    let msgtype = match (c.msgtype.as_ref(), html) {
        ("m.text", None) => MessageType::Text(TextMessageEventContent::plain(body)),
        ("m.text", Some(html)) => MessageType::Text(TextMessageEventContent::html(body, html)),
        ("m.notice", None) => MessageType::Notice(NoticeMessageEventContent::plain(body)),
        ("m.notice", Some(html)) => {
            MessageType::Notice(NoticeMessageEventContent::html(body, html))
        }
        ("m.emote", None) => MessageType::Emote(EmoteMessageEventContent::plain(body)),
        ("m.emote", Some(html)) => MessageType::Emote(EmoteMessageEventContent::html(body, html)),
        _ => return None,
    };
    let mut content = RoomMessageEventContent::new(msgtype);
    content.mentions = c.mentions.map(|NoMentions {}| Mentions::new());
    Some(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[CommandSpec] = &[
        CommandSpec { name: "list", args: "", help: "list things", level: PermissionLevel::User },
        CommandSpec {
            name: "nuke",
            args: "NAME",
            help: "delete all",
            level: PermissionLevel::Admin,
        },
    ];

    #[test]
    fn help_lists_only_what_the_level_may_use() {
        let user = help_text("!x", SPECS, PermissionLevel::User);
        assert!(user.contains("`!x list` — list things"), "{user}");
        assert!(!user.contains("nuke"), "{user}");
        let admin = help_text("!x", SPECS, PermissionLevel::Admin);
        assert!(admin.contains("`!x nuke NAME` — delete all"), "{admin}");
    }

    /// Every combination of the parts a message content is made of: where the direct path
    /// builds the content, it must be what ruma's deserializer makes of the same JSON.
    #[test]
    fn the_direct_message_path_agrees_with_ruma() {
        let msgtypes = [r#""m.text""#, r#""m.notice""#, r#""m.emote""#, r#""m.image""#, "7"];
        let bodies = [r#""hi""#, r#""tab\t \u00e9 \"q\" \\ 🦀""#, "null", ""];
        let formats = [
            "",
            r#","format":"org.matrix.custom.html","formatted_body":"<b>hi</b>""#,
            r#","format":"org.matrix.custom.html""#,
            r#","formatted_body":"<b>hi</b>""#,
            r#","format":"x.other","formatted_body":"hi""#,
        ];
        let mentions =
            ["", r#","m.mentions":{}"#, r#","m.mentions":null"#, r#","m.mentions":{"room":true}"#];
        let extras = [
            "",
            r#","m.relates_to":{"m.in_reply_to":{"event_id":"$x"}}"#,
            r#","m.relates_to":{"rel_type":"m.replace","event_id":"$x"}"#,
            r#","url":"mxc://x/y""#,
            r#","body":"again""#,
        ];
        let (mut direct, mut total) = (0, 0);
        for msgtype in msgtypes {
            for body in bodies {
                for format in formats {
                    for mention in mentions {
                        for extra in extras {
                            let body = if body.is_empty() {
                                String::new()
                            } else {
                                format!(r#","body":{body}"#)
                            };
                            let json = format!(
                                r#"{{"event_id":"$e","room_id":"!r:x","sender":"@u:x","type":"m.room.message","content":{{"msgtype":{msgtype}{body}{format}{mention}{extra}}}}}"#
                            );
                            let event = Event::from_json(&json).unwrap();
                            let by_ruma = event.content::<RoomMessageEventContent>();
                            total += 1;
                            // The envelope found the content: the fast path reads only it.
                            let content = event.content_json().expect("content located");
                            assert!(json.contains(content) && content.starts_with("{\"msgtype\""));
                            let fast = serde_json::from_str::<SimpleMessage<'_>>(content)
                                .ok()
                                .and_then(simple_message);
                            if let Some(fast) = fast {
                                direct += 1;
                                let ruma =
                                    by_ruma.unwrap_or_else(|e| panic!("{json}: ruma says {e}"));
                                assert_eq!(
                                    serde_json::to_value(&fast).unwrap(),
                                    serde_json::to_value(&ruma).unwrap(),
                                    "{json}"
                                );
                            }
                            let routed =
                                message_content(&event).map(|c| serde_json::to_value(c).unwrap());
                            let ruma = event
                                .content::<RoomMessageEventContent>()
                                .map(|c| serde_json::to_value(c).unwrap());
                            assert_eq!(routed.ok(), ruma.ok(), "{json}");
                        }
                    }
                }
            }
        }
        // text, notice, emote × (plain, HTML) × (no, empty, null mentions) × three bodies: the
        // two given in place and the one that comes as an extra key.
        assert_eq!(direct, 3 * 2 * 3 * 3, "of {total}");
    }
}

#[cfg(test)]
mod route_tests {
    use std::sync::Mutex;

    use ruma::{room_id, user_id};
    use serde_json::json;

    use super::*;
    use crate::{
        store::Store,
        testing::{MockHomeserver, test_registration},
    };

    #[derive(Default)]
    struct Tb {
        seen: Mutex<Vec<String>>,
        /// What reached the raw hook, by event ID.
        raw: Mutex<Vec<String>>,
    }

    impl Bridge for Tb {
        type Config = crate::config::NoBridgeConfig;
        const NAME: &'static str = "tb";
        async fn create(_: Self::Config, _: Context) -> BridgeResult<Self> {
            Ok(Self::default())
        }
        async fn handle_event(&self, event: &Event) -> BridgeResult {
            self.raw.lock().unwrap().push(event.event_id.to_string());
            Ok(())
        }
        async fn handle_message(&self, m: &MatrixMessage) -> BridgeResult {
            self.seen.lock().unwrap().push(format!("message {}", m.content.body()));
            Ok(())
        }
        async fn handle_membership(&self, m: &MatrixMembership) -> BridgeResult {
            self.seen.lock().unwrap().push(format!("{} {}", m.target, m.membership));
            Ok(())
        }
        async fn handle_edit(&self, e: &MatrixEdit) -> BridgeResult {
            let remote = e.target_remote.as_ref().map(|(_, id)| id.to_string());
            self.seen.lock().unwrap().push(format!("edit {remote:?} {}", e.new_content.body()));
            Ok(())
        }
        fn commands(&self) -> Vec<CommandSpec> {
            vec![
                CommandSpec::new("list", "", "list"),
                CommandSpec::new("nuke", "NAME", "nuke").level(PermissionLevel::Admin),
            ]
        }
        async fn handle_command(&self, call: &CommandCall) -> BridgeResult<String> {
            Ok(format!("ran {} {}", call.name, call.arg(0, "NAME").unwrap_or("-")))
        }
    }

    async fn setup(hs: &MockHomeserver) -> Context {
        let store = Store::connect_url("sqlite::memory:").await.unwrap();
        let config: crate::Config<()> = crate::Config::from_yaml(&format!(
            "homeserver: {{address: '{}', domain: localhost}}\n\
             appservice: {{id: test-bridge, address: 'http://127.0.0.1:2', port: 2, \
             bot: {{localpart: _test_bot}}, ghost_localpart_template: '_test_{{id}}'}}\n\
             permissions: {{'@admin:localhost': admin, localhost: user}}\n",
            hs.url()
        ))
        .unwrap();
        let room = room_id!("!r:localhost");
        store
            .set_membership(room.as_str(), "@_test_bot:localhost", Membership::Join, None, None)
            .await
            .unwrap();
        Context::with_client(store, test_registration(), config, hs.client())
    }

    fn message(sender: &str, body: &str) -> Event {
        Event::from_json(
            &json!({"event_id": format!("$m{}", body.len()), "room_id": "!r:localhost", "sender": sender,
                    "type": "m.room.message", "content": {"msgtype": "m.text", "body": body}})
            .to_string(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn commands_check_permissions_and_answer_as_the_bot() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let room = room_id!("!r:localhost");
        let tb = Tb::default();
        hs.mock_send(room, "m.room.message")
            .as_bot()
            .with_body(json!({"body": "ran list -"}))
            .ok()
            .expect(1)
            .mount()
            .await;
        hs.mock_send(room, "m.room.message")
            .as_bot()
            .with_body(json!({"body": "You don't have permission to use `nuke`."}))
            .ok()
            .expect(1)
            .mount()
            .await;
        hs.mock_send(room, "m.room.message")
            .as_bot()
            .with_body(json!({"body": "ran nuke x"}))
            .ok()
            .expect(1)
            .mount()
            .await;
        route(&ctx, &tb, &message("@alice:localhost", "!tb list")).await.unwrap();
        route(&ctx, &tb, &message("@alice:localhost", "!tb nuke x")).await.unwrap();
        route(&ctx, &tb, &message("@admin:localhost", "!tb nuke x")).await.unwrap();
        // Users without a level are ignored: no answer at all (any extra send fails the mocks).
        route(&ctx, &tb, &message("@eve:elsewhere", "!tb list")).await.unwrap();
        // A prefix that is only a word's start is no command.
        route(&ctx, &tb, &message("@alice:localhost", "!tbx list")).await.unwrap();
        assert_eq!(*tb.seen.lock().unwrap(), ["message !tbx list"]);
    }

    /// Every member event reaches the raw hook; only those with a user and a known membership
    /// reach `handle_membership`.
    #[tokio::test]
    async fn member_events_the_typed_hook_cannot_take_still_reach_the_raw_hook() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let tb = Tb::default();
        let member = |id: &str, state_key: &str, content: serde_json::Value| {
            Event::from_json(
                &json!({"event_id": id, "room_id": "!r:localhost", "sender": "@alice:localhost",
                        "type": "m.room.member", "state_key": state_key, "content": content})
                .to_string(),
            )
            .unwrap()
        };
        let events = [
            member("$join", "@alice:localhost", json!({"membership": "join"})),
            member("$custom", "@alice:localhost", json!({"membership": "xyz.dancing"})),
            member("$none", "@alice:localhost", json!({})),
            member("$not_a_user", "alice", json!({"membership": "join"})),
        ];
        for event in &events {
            route(&ctx, &tb, event).await.unwrap();
        }
        assert_eq!(*tb.raw.lock().unwrap(), ["$join", "$custom", "$none", "$not_a_user"]);
        assert_eq!(*tb.seen.lock().unwrap(), ["@alice:localhost join"]);
    }

    #[tokio::test]
    async fn own_events_are_suppressed_and_edits_are_mapped_to_remote_messages() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let tb = Tb::default();
        route(&ctx, &tb, &message("@_test_ghost:localhost", "from our ghost")).await.unwrap();
        route(&ctx, &tb, &message("@_test_bot:localhost", "from our bot")).await.unwrap();
        let original = message("@alice:localhost", "hello");
        route(&ctx, &tb, &original).await.unwrap();
        ctx.record_remote_message(&"chat".into(), &"remote-1".into(), &original).await.unwrap();
        let edit = Event::from_json(
            &json!({"event_id": "$edit", "room_id": "!r:localhost", "sender": "@alice:localhost",
                    "type": "m.room.message", "content": {"msgtype": "m.text", "body": "* hi",
                    "m.new_content": {"msgtype": "m.text", "body": "hi"},
                    "m.relates_to": {"rel_type": "m.replace", "event_id": original.event_id}}})
            .to_string(),
        )
        .unwrap();
        route(&ctx, &tb, &edit).await.unwrap();
        assert_eq!(*tb.seen.lock().unwrap(), ["message hello", "edit Some(\"remote-1\") hi"]);
    }

    #[tokio::test]
    async fn ghost_ids_follow_the_template_and_never_name_the_bot() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        assert_eq!(
            ctx.ghost_user_id(&"Bob Smith".into()).unwrap().as_str(),
            "@_test__bob=20_smith:localhost"
        );
        assert!(
            ctx.ghost_user_id(&"bot".into()).is_err(),
            "a remote user called bot is not the bot"
        );
    }

    #[derive(Default)]
    struct Eph {
        seen: Mutex<Vec<String>>,
    }

    impl Bridge for Eph {
        type Config = crate::config::NoBridgeConfig;
        const NAME: &'static str = "eph";
        async fn create(_: Self::Config, _: Context) -> BridgeResult<Self> {
            Ok(Self::default())
        }
        async fn handle_typing(&self, t: &MatrixTyping) {
            self.seen.lock().unwrap().push(format!(
                "typing {:?}",
                t.user_ids.iter().map(|u| u.as_str()).collect::<Vec<_>>()
            ));
        }
        async fn handle_receipt(&self, r: &MatrixReceipt) {
            self.seen
                .lock()
                .unwrap()
                .push(format!("receipt {} {} {}", r.user_id, r.event_id, r.receipt_type));
        }
        async fn handle_presence(&self, p: &MatrixPresence) {
            self.seen.lock().unwrap().push(format!("presence {} {}", p.user_id, p.presence));
        }
    }

    #[tokio::test]
    async fn typing_receipts_and_presence_are_typed_without_our_own_users() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let eph = Eph::default();
        let edu = |v: serde_json::Value| crate::bridge::EphemeralEvent {
            kind: v["type"].as_str().unwrap().to_owned(),
            room_id: v["room_id"].as_str().map(|r| r.try_into().unwrap()),
            json: serde_json::value::to_raw_value(&v).unwrap(),
        };
        let events = [
            edu(json!({"type": "m.typing", "room_id": "!r:localhost",
                       "content": {"user_ids": ["@alice:localhost", "@_test_ghost:localhost"]}})),
            edu(
                json!({"type": "m.receipt", "room_id": "!r:localhost", "content": {"$e": {"m.read": {
                       "@alice:localhost": {"ts": 1}, "@_test_ghost:localhost": {"ts": 2}}}}}),
            ),
            edu(
                json!({"type": "m.presence", "sender": "@alice:localhost", "content": {"presence": "online"}}),
            ),
            edu(
                json!({"type": "m.presence", "sender": "@_test_ghost:localhost", "content": {"presence": "online"}}),
            ),
        ];
        for e in &events {
            route_ephemeral(&ctx, &eph, e).await;
        }
        assert_eq!(
            *eph.seen.lock().unwrap(),
            [
                "typing [\"@alice:localhost\"]",
                "receipt @alice:localhost $e m.read",
                "presence @alice:localhost online"
            ]
        );
    }

    #[tokio::test]
    async fn invites_of_our_users_are_accepted() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let room = room_id!("!r:localhost");
        let ghost = user_id!("@_test_new:localhost");
        hs.mock_register().ok_body(json!({"user_id": ghost})).expect(1).mount().await;
        hs.mock_join(room).as_user(ghost).ok_body(json!({"room_id": room})).expect(1).mount().await;
        let invite = Event::from_json(
            &json!({"event_id": "$inv", "room_id": room, "sender": "@alice:localhost",
                    "type": "m.room.member", "state_key": ghost, "content": {"membership": "invite"}})
            .to_string(),
        )
        .unwrap();
        route(&ctx, &Tb::default(), &invite).await.unwrap();
        assert_eq!(
            ctx.store().membership(room.as_str(), ghost.as_str()).await.unwrap(),
            Some(Membership::Join)
        );
    }
}
