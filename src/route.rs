//! The event router: what an incoming event means, and which handler hears of it.
//!
//! The dispatcher runs [`route`] for every stored event after the state cache was updated:
//! 1. **Echo suppression**: events sent by our own users (the bot and every ghost) stop here, so
//!    what the bridge itself posted never comes back as new.
//! 2. **Invites** of the bot or a ghost: refused with a reason when the inviter's `permissions:`
//!    level is below `user`, else accepted when [`Bridge::accept_invite`] agrees.
//! 3. **Commands**: a message to the bot (with the prefix, or any message in a DM with the bot)
//!    runs the bridge's command; `help` is generated.
//! 4. Every other event reaches exactly one handler: messages in portals, messages in other
//!    rooms, edits, reactions and redactions of bridged messages (with their target), membership,
//!    and the raw hook for the rest. The Matrix → remote handlers' [`Delivery`] becomes the
//!    [`Bookkeeping`] the dispatcher records, or a report to the sender when nothing went out.

use std::borrow::Cow;

use ruma::{
    EventId, OwnedEventId, OwnedUserId, RoomId,
    api::client::message::send_message_event,
    events::{
        Mentions,
        reaction::ReactionEventContent,
        relation::{InReplyTo, Reply},
        room::member::MembershipState,
        room::message::{
            EmoteMessageEventContent, MessageType, NoticeMessageEventContent, Relation,
            RoomMessageEventContent, RoomMessageEventContentWithoutRelation,
            TextMessageEventContent,
        },
    },
    serde::Raw,
};
use serde::Deserialize;

use crate::{
    Context,
    bridge::{Bridge, BridgeError, BridgeResult, Delivery},
    commands::{CommandCall, CommandSpec, command_call, command_prefix, help_text},
    config::PermissionLevel,
    event::{
        ChatInfoChange, EphemeralEvent, Event, MatrixChatInfo, MatrixEdit, MatrixMembership,
        MatrixMessage, MatrixPresence, MatrixReaction, MatrixReceipt, MatrixRedaction,
        MatrixRoomMessage, MatrixTyping, MembershipChange, Sender, Target,
    },
    remote::{Portal, RemotePartId},
    store::{Membership, MessageRow, PendingRow},
};

/// Hands one ephemeral event to the bridge: the raw hook, then the typed one (typing, receipts,
/// presence), leaving out what our own users did.
pub(crate) async fn route_ephemeral<B: Bridge>(ctx: &Context, bridge: &B, event: &EphemeralEvent) {
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

/// What the dispatcher records for a handled event, before it marks the event handled.
#[derive(Debug, Default)]
pub(crate) struct Bookkeeping {
    /// The event's mappings to remote messages.
    pub(crate) messages: Vec<MessageRow>,
    /// The event, waiting for the network's echo to bring its remote ID.
    pub(crate) pending: Option<PendingRow>,
}

impl Bookkeeping {
    /// Whether there is nothing to record.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.pending.is_none()
    }
}

/// Hands one timeline event to the one handler that takes it (see the module docs) and says
/// what to record for it.
pub(crate) async fn route<B: Bridge>(
    ctx: &Context,
    bridge: &B,
    event: &Event,
) -> BridgeResult<Bookkeeping> {
    if ctx.registration().is_user_in_namespace(&event.sender) {
        // Echo suppression: our own ghosts' and bot's events are never new to the bridge.
        if event.kind == "m.room.member"
            && event.state_key.as_deref() == Some(event.sender.as_str())
        {
            Box::pin(own_member_event(ctx, event)).await;
        }
        return Ok(Bookkeeping::default());
    }
    if crate::puppet::is_our_echo(ctx, event) {
        // What the bridge sent as a user's own account (double puppeting).
        return Ok(Bookkeeping::default());
    }
    let sender = Sender {
        user_id: event.sender.clone(),
        level: ctx.permission_level(&event.sender),
        via: None,
    };
    match event.kind.as_str() {
        "m.room.member" => Box::pin(route_membership(ctx, bridge, event, sender)).await,
        "m.room.message" => route_message(ctx, bridge, event, sender).await,
        "m.reaction" => Box::pin(route_reaction(ctx, bridge, event, sender)).await,
        "m.room.redaction" => Box::pin(route_redaction(ctx, bridge, event, sender)).await,
        "m.room.name" | "m.room.topic" | "m.room.avatar"
            if event.state_key.as_deref() == Some("") =>
        {
            Box::pin(route_chat_info(ctx, bridge, event, sender)).await
        }
        "m.room.tombstone" if event.state_key.as_deref() == Some("") => {
            // The portal moves only for someone the bridge acts for.
            if sender.level >= PermissionLevel::User {
                Box::pin(follow_tombstone(ctx, event)).await?;
            }
            handle_other(bridge, event).await
        }
        _ => handle_other(bridge, event).await,
    }
}

/// A portal's room was replaced (upgraded): the bot joins the new room and the portal moves
/// there, so the chat stays bridged. When the bot may not join yet (an invite-only room), the
/// move waits for its invite: it is stored, and made when the bot joins the new room
/// ([`own_member_event`]). Until then the old room still works for the users who stay.
async fn follow_tombstone(ctx: &Context, event: &Event) -> BridgeResult {
    #[derive(Deserialize)]
    struct Tombstone {
        replacement_room: ruma::OwnedRoomId,
    }
    let Ok(tombstone) = event.content::<Tombstone>() else { return Ok(()) };
    if ctx.store().portal_by_room(&event.room_id).await?.is_none() {
        return Ok(());
    }
    let new_room = tombstone.replacement_room;
    match Box::pin(ctx.bot().ensure_joined(&new_room).into_future()).await {
        Ok(_) => move_portal(ctx, &event.room_id, &new_room).await?,
        Err(e) => {
            let old = &event.room_id;
            tracing::warn!(%old, new = %new_room, error = %e, "cannot join the upgraded room yet; \
                the portal moves when the bot is invited there");
            ctx.store().kv_put_json(MOVES, new_room.as_str(), old).await?;
            // The invite may have come, and the bot joined, while it tried.
            if ctx.store().membership(&new_room, ctx.bot_user_id()).await? == Some(Membership::Join)
            {
                move_portal(ctx, old, &new_room).await?;
            }
        }
    }
    Ok(())
}

/// Portal moves waiting for the bot to join the replacement room: old room by new room.
const MOVES: &str = "mx.portal_moves";

/// Moves the portal of `old` to `new`.
async fn move_portal(ctx: &Context, old: &RoomId, new: &RoomId) -> BridgeResult {
    let Some(mut row) = ctx.store().portal_by_room(old).await? else { return Ok(()) };
    tracing::info!(%old, %new, "the portal moved to its new room");
    row.room_id = Some(new.to_owned());
    ctx.store().upsert_portal(&row).await?;
    ctx.store().kv_delete(MOVES, new.as_str()).await?;
    Ok(())
}

/// One of our users joined (by whatever path): the room's members and state are fetched once,
/// so people who were there before are known. A failure is only logged.
async fn own_member_event(ctx: &Context, event: &Event) {
    let room_id = &event.room_id;
    let Ok(joined) = ctx.store().membership(room_id, &event.sender).await else {
        return;
    };
    if joined != Some(Membership::Join) {
        return;
    }
    if event.sender == ctx.bot_user_id() {
        // The replacement of an upgraded portal room, which the bot could not join before.
        match ctx.store().kv_get_json::<ruma::OwnedRoomId>(MOVES, room_id.as_str()).await {
            Ok(Some(old)) => {
                if let Err(e) = move_portal(ctx, &old, room_id).await {
                    tracing::warn!(%old, new = %room_id, error = %e, "could not move the portal");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the portal moves"),
        }
    }
    if let Ok(intent) = ctx.intent(&event.sender)
        && let Err(err) = intent.ensure_room_state(room_id).await
    {
        tracing::warn!(%room_id, error = %err, "could not fetch the room's members and state");
    }
}

/// A reaction to a bridged message (rare next to messages: boxed by the caller).
async fn route_reaction<B: Bridge>(
    ctx: &Context,
    bridge: &B,
    event: &Event,
    mut sender: Sender,
) -> BridgeResult<Bookkeeping> {
    let Ok(content) = event.content::<ReactionEventContent>() else {
        return handle_other(bridge, event).await;
    };
    let Some(portal) = ctx.portal_for_room(&event.room_id).await? else {
        return Ok(Bookkeeping::default());
    };
    let annotation = content.relates_to;
    let Some(target) = target_in(ctx, &portal, &annotation.event_id).await? else {
        tracing::debug!(target = %annotation.event_id, "reaction to an unbridged event");
        return Ok(Bookkeeping::default());
    };
    if !assign_via(ctx, event, &mut sender, &portal, Notice::No).await? {
        return Ok(Bookkeeping::default());
    }
    let reaction =
        MatrixReaction { event: event.clone(), sender, portal, target, key: annotation.key };
    let delivery = bridge.handle_reaction(&reaction).await?;
    Ok(record(ctx, event, &reaction.portal, delivery, Notice::No))
}

/// A redaction of a bridged message (boxed by the caller).
async fn route_redaction<B: Bridge>(
    ctx: &Context,
    bridge: &B,
    event: &Event,
    mut sender: Sender,
) -> BridgeResult<Bookkeeping> {
    let Some((target, reason)) = redaction_of(event) else {
        return handle_other(bridge, event).await;
    };
    let Some(portal) = ctx.portal_for_room(&event.room_id).await? else {
        return Ok(Bookkeeping::default());
    };
    let Some(target) = target_in(ctx, &portal, &target).await? else {
        tracing::debug!(%target, "redaction of an unbridged event");
        return Ok(Bookkeeping::default());
    };
    if !assign_via(ctx, event, &mut sender, &portal, Notice::No).await? {
        return Ok(Bookkeeping::default());
    }
    let redaction = MatrixRedaction { event: event.clone(), sender, portal, target, reason };
    let delivery = bridge.handle_redaction(&redaction).await?;
    Ok(record(ctx, event, &redaction.portal, delivery, Notice::No))
}

/// A name, topic or avatar change (boxed by the caller).
async fn route_chat_info<B: Bridge>(
    ctx: &Context,
    bridge: &B,
    event: &Event,
    sender: Sender,
) -> BridgeResult<Bookkeeping> {
    let Some(change) = chat_info_change(event) else {
        return handle_other(bridge, event).await;
    };
    let Some(portal) = ctx.portal_for_room(&event.room_id).await? else {
        return handle_other(bridge, event).await;
    };
    let info = MatrixChatInfo { event: event.clone(), sender, portal, change };
    let delivery = bridge.handle_chat_info(&info).await?;
    Ok(record(ctx, event, &info.portal, delivery, Notice::No))
}

/// An edit: to its handler when its target was bridged, else a report to its sender.
async fn route_edit<B: Bridge>(
    ctx: &Context,
    bridge: &B,
    event: &Event,
    mut sender: Sender,
    portal: Option<Portal>,
    replacement: &ruma::events::relation::Replacement<RoomMessageEventContentWithoutRelation>,
) -> BridgeResult<Bookkeeping> {
    // Edits in a room without a remote side go nowhere.
    let Some(portal) = portal else { return Ok(Bookkeeping::default()) };
    let Some(target) = target_in(ctx, &portal, &replacement.event_id).await? else {
        let text = "The edited message was not bridged, so the edit was not either.";
        report_not_delivered(ctx, event, StatusReason::Unsupported, text, Notice::Yes);
        return Ok(Bookkeeping::default());
    };
    if !assign_via(ctx, event, &mut sender, &portal, Notice::Yes).await? {
        return Ok(Bookkeeping::default());
    }
    let mut new_content = RoomMessageEventContent::new(replacement.new_content.msgtype.clone());
    if sender.via.as_ref().is_some_and(crate::login::SendVia::is_relay) {
        crate::relay::format_relayed(ctx, event, &mut new_content).await;
    }
    let edit = MatrixEdit { event: event.clone(), sender, portal, target, new_content };
    let delivery = bridge.handle_edit(&edit).await?;
    Ok(record(ctx, event, &edit.portal, delivery, Notice::Yes))
}

async fn handle_other<B: Bridge>(bridge: &B, event: &Event) -> BridgeResult<Bookkeeping> {
    bridge.handle_other(event).await?;
    Ok(Bookkeeping::default())
}

/// A membership change: invites of our users accepted or refused, then `handle_membership`.
async fn route_membership<B: Bridge>(
    ctx: &Context,
    bridge: &B,
    event: &Event,
    sender: Sender,
) -> BridgeResult<Bookkeeping> {
    // A member event without a user or a known membership goes to the raw hook.
    let Some(target) = event.state_key.as_deref().and_then(|s| OwnedUserId::try_from(s).ok())
    else {
        return handle_other(bridge, event).await;
    };
    let Some(membership) = event
        .content::<MembershipOnly>()
        .ok()
        .map(|c| c.membership)
        .filter(|m| Membership::parse(m.as_str()).is_some())
    else {
        return handle_other(bridge, event).await;
    };
    let target_is_ours = ctx.registration().is_user_in_namespace(&target);
    let portal = ctx.portal_for_room(&event.room_id).await?;
    let previous = event.unsigned::<PreviousMembership>().ok().and_then(|u| u.prev_content);
    let by_self = event.sender == target;
    let change =
        MembershipChange::between(previous.as_ref().map(|p| &p.membership), &membership, by_self);
    let m = MatrixMembership {
        event: event.clone(),
        sender,
        target,
        membership,
        change,
        target_is_ours,
        portal,
    };
    if target_is_ours && m.membership == MembershipState::Invite {
        let intent = ctx.intent(&m.target)?;
        if m.sender.level < PermissionLevel::User {
            let inviter = &m.sender.user_id;
            tracing::info!(%inviter, "refusing an invite from a user without permission");
            refuse_invite(&intent, &event.room_id, "You are not allowed to use this bridge.").await;
        } else if bridge.accept_invite(&m).await {
            // Rare and heavy: boxed, so it does not grow every event's future.
            intent.ensure_joined(&event.room_id).await?;
        } else {
            refuse_invite(&intent, &event.room_id, "The bridge declined the invite.").await;
        }
    }
    bridge.handle_membership(&m).await?;
    Ok(Bookkeeping::default())
}

/// Rejects an invite with a reason. Best effort: an invite left pending does no harm.
async fn refuse_invite(intent: &crate::intent::Intent, room_id: &RoomId, reason: &str) {
    if let Err(e) = intent.leave(room_id).reason(reason).await {
        tracing::warn!(error = %e, user = %intent.user_id(), "could not reject the invite");
    }
}

/// A message: an edit, a command, a message in a portal or in another room.
async fn route_message<B: Bridge>(
    ctx: &Context,
    bridge: &B,
    event: &Event,
    mut sender: Sender,
) -> BridgeResult<Bookkeeping> {
    let content = message_content(event).map_err(BridgeError::permanent)?;
    let portal = ctx.portal_for_room(&event.room_id).await?;
    if portal.is_some() && ctx.config().encryption.require && !event.encrypted {
        let why = "this portal bridges encrypted messages only";
        report_not_delivered(ctx, event, StatusReason::Unsupported, why, Notice::Yes);
        return Ok(Bookkeeping::default());
    }
    if let Some(Relation::Replacement(replacement)) = &content.relates_to {
        // Rare next to new messages: boxed, so it does not grow every message's future.
        return Box::pin(route_edit(ctx, bridge, event, sender, portal, replacement)).await;
    }
    // A bridge without commands has no command syntax: skip the lookups.
    if !bridge.commands().is_empty() || ctx.logins().enabled() {
        let prefix = command_prefix(ctx, B::NAME);
        if portal.is_none()
            && Box::pin(crate::accounts::commands::take_answer(ctx, event, content.body(), &prefix))
                .await?
        {
            return Ok(Bookkeeping::default());
        }
        let call = command_call(ctx, &prefix, event, &content, portal.clone());
        if let Some(call) = Box::pin(call).await? {
            Box::pin(run_command(ctx, bridge, call)).await?;
            return Ok(Bookkeeping::default());
        }
    }
    let Some(portal) = portal else {
        let message = MatrixRoomMessage { event: event.clone(), sender, content };
        bridge.handle_room_message(&message).await?;
        return Ok(Bookkeeping::default());
    };
    // Boxed, as every await in a message's path that not every message takes: the future of
    // every event is as large as its largest path.
    if !Box::pin(assign_via(ctx, event, &mut sender, &portal, Notice::Yes)).await? {
        return Ok(Bookkeeping::default());
    }
    let mut content = content;
    if sender.via.as_ref().is_some_and(crate::login::SendVia::is_relay) {
        Box::pin(crate::relay::format_relayed(ctx, event, &mut content)).await;
    }
    let reply_to = match &content.relates_to {
        Some(Relation::Reply(reply)) => {
            Box::pin(target_in(ctx, &portal, &reply.in_reply_to.event_id)).await?.map(|t| t.remote)
        }
        _ => None,
    };
    let message = MatrixMessage { event: event.clone(), sender, portal, content, reply_to };
    let delivery = bridge.handle_message(&message).await?;
    Ok(record(ctx, event, &message.portal, delivery, Notice::Yes))
}

/// Sets the login an event in a portal goes out through (see `relay.rs`); when no login may
/// carry it, tells the sender and returns `false`.
async fn assign_via(
    ctx: &Context,
    event: &Event,
    sender: &mut Sender,
    portal: &Portal,
    notice: Notice,
) -> BridgeResult<bool> {
    match crate::relay::via_for(ctx, sender, portal).await? {
        Ok(via) => {
            sender.via = via;
            Ok(true)
        }
        Err(why) => {
            report_not_delivered(ctx, event, StatusReason::NoLogin, &why, notice);
            Ok(false)
        }
    }
}

/// The bridged message an event refers to, when it is in this portal (an event of another
/// room cannot be the target of an edit, reaction or redaction here).
async fn target_in(
    ctx: &Context,
    portal: &Portal,
    event_id: &EventId,
) -> BridgeResult<Option<Target>> {
    let found = ctx.remote_message_for(event_id).await?;
    Ok(found
        .filter(|remote| remote.portal == portal.key)
        .map(|remote| Target { event_id: event_id.to_owned(), remote }))
}

/// What a Matrix → remote handler's answer means for the bookkeeping and for the sender.
fn record(
    ctx: &Context,
    event: &Event,
    portal: &Portal,
    delivery: Delivery,
    notice: Notice,
) -> Bookkeeping {
    match delivery {
        Delivery::Sent(ids) => {
            let timestamp = crate::util::now_ms();
            let messages = ids
                .into_iter()
                .map(|id| MessageRow {
                    portal: portal.key.clone(),
                    id,
                    part: RemotePartId::default(),
                    event_id: event.event_id.clone(),
                    room_id: event.room_id.clone(),
                    sender: event.sender.clone(),
                    timestamp,
                })
                .collect();
            Bookkeeping { messages, pending: None }
        }
        Delivery::Pending(txn_id) => Bookkeeping {
            messages: Vec::new(),
            pending: Some(PendingRow {
                portal: portal.key.clone(),
                txn_id,
                event_id: event.event_id.clone(),
                room_id: event.room_id.clone(),
                sender: event.sender.clone(),
            }),
        },
        Delivery::Done => Bookkeeping::default(),
        Delivery::NotSupported(reason) => {
            report_not_delivered(ctx, event, StatusReason::Unsupported, &reason, notice);
            Bookkeeping::default()
        }
    }
}

/// Whether a report of an undelivered event also posts a notice in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    /// A notice replying to the event, and the send status.
    Yes,
    /// The send status only (reactions and redactions: a notice for each would be noise).
    No,
}

/// Why an event was not delivered, as `com.beeper.message_send_status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusReason {
    /// The bridge does not bridge this (or its target).
    Unsupported,
    /// The bridge failed for good (the event was parked).
    Failed,
    /// No login may carry the event (the sender has none in the portal, and no relay).
    NoLogin,
    /// The event is encrypted and its room key has not arrived: it is bridged when it does.
    #[cfg_attr(not(feature = "encryption"), allow(dead_code))]
    AwaitingKey,
}

/// Tells the sender that an event did not reach the remote network: a failed
/// `com.beeper.message_send_status` event, which bridge-aware clients show on the event, and
/// (unless `notice` says no, or `inbox.failure_notices` is off) a notice from the bot replying
/// to it. Sent in the background, so the room's next events do not wait; a failure is logged.
pub(crate) fn report_not_delivered(
    ctx: &Context,
    event: &Event,
    reason: StatusReason,
    message: &str,
    notice: Notice,
) {
    let status = serde_json::json!({
        "network": ctx.appservice().id,
        "m.relates_to": { "rel_type": "m.reference", "event_id": event.event_id },
        "status": if reason == StatusReason::AwaitingKey { "FAIL_RETRIABLE" } else { "FAIL_PERMANENT" },
        "reason": match reason {
            StatusReason::Unsupported => "m_event_unsupported",
            StatusReason::Failed => "m_foreign_network_error",
            StatusReason::NoLogin => "m_no_permission",
            StatusReason::AwaitingKey => "m_undecryptable",
        },
        "message": message,
    });
    let notice = (notice == Notice::Yes && ctx.config().inbox.failure_notices).then(|| {
        let mut content =
            RoomMessageEventContent::notice_plain(if reason == StatusReason::AwaitingKey {
                format!("⏳ Your message is not bridged yet: {message}")
            } else {
                format!("⚠️ Your message was not bridged: {message}")
            });
        content.relates_to =
            Some(Relation::Reply(Reply::new(InReplyTo::new(event.event_id.clone()))));
        content
    });
    let (ctx, room_id) = (ctx.clone(), event.room_id.clone());
    tokio::spawn(async move {
        let raw = Raw::new(&status).expect("a JSON value serializes").cast_unchecked();
        let request = send_message_event::v3::Request::new_raw(
            room_id.clone(),
            crate::client::new_txn_id(),
            "com.beeper.message_send_status".into(),
            raw,
        );
        if let Err(e) = ctx.client().send(request, None).await {
            tracing::warn!(error = %e, "could not send the message status");
        }
        if let Some(content) = notice
            && let Err(e) = ctx.bot().send(&room_id, &content).await
        {
            tracing::warn!(error = %e, "could not post the notice");
        }
    });
}

/// The target and reason of a redaction: room versions up to 10 put `redacts` at the top level,
/// 11 and later in the content.
fn redaction_of(event: &Event) -> Option<(OwnedEventId, Option<String>)> {
    #[derive(Deserialize)]
    struct Redaction {
        #[serde(default)]
        redacts: Option<OwnedEventId>,
        #[serde(default)]
        content: RedactionContent,
    }
    #[derive(Deserialize, Default)]
    struct RedactionContent {
        #[serde(default)]
        redacts: Option<OwnedEventId>,
        #[serde(default)]
        reason: Option<String>,
    }
    let r: Redaction = serde_json::from_str(event.json()).ok()?;
    let target = r.content.redacts.or(r.redacts)?;
    Some((target, r.content.reason))
}

/// The change an `m.room.name`, `m.room.topic` or `m.room.avatar` event makes; `None` for a
/// content of the wrong shape.
fn chat_info_change(event: &Event) -> Option<ChatInfoChange> {
    #[derive(Deserialize)]
    struct Look {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        topic: Option<String>,
        #[serde(default)]
        url: Option<ruma::OwnedMxcUri>,
    }
    let look: Look = event.content().ok()?;
    let present = |s: Option<String>| s.filter(|s| !s.is_empty());
    Some(match event.kind.as_str() {
        "m.room.name" => ChatInfoChange::Name(present(look.name)),
        "m.room.topic" => ChatInfoChange::Topic(present(look.topic)),
        _ => ChatInfoChange::Avatar(look.url.filter(|u| !u.as_str().is_empty())),
    })
}

/// Only the `membership` of an `m.room.member` content.
#[derive(Deserialize)]
struct MembershipOnly {
    membership: MembershipState,
}

/// The previous membership, from a member event's `unsigned.prev_content`.
#[derive(Deserialize)]
struct PreviousMembership {
    #[serde(default)]
    prev_content: Option<MembershipOnly>,
}

/// The framework's own commands: logins and relays, double puppeting, and portals.
fn builtin_specs(ctx: &Context) -> Vec<CommandSpec> {
    let mut specs = crate::accounts::commands::specs(ctx);
    specs.extend(crate::puppet::specs(ctx));
    specs.extend(crate::portal::commands::specs(ctx));
    #[cfg(feature = "encryption")]
    specs.extend(crate::crypto::commands::specs(ctx));
    specs
}

/// Runs a built-in command; `None` when `call` is none of them.
async fn run_builtin(ctx: &Context, call: &CommandCall) -> Option<BridgeResult<String>> {
    if let Some(done) = Box::pin(crate::accounts::commands::run(ctx, call)).await {
        return Some(done);
    }
    if let Some(done) = Box::pin(crate::puppet::run(ctx, call)).await {
        return Some(done);
    }
    #[cfg(feature = "encryption")]
    if let Some(done) = Box::pin(crate::crypto::commands::run(ctx, call)).await {
        return Some(done);
    }
    Box::pin(crate::portal::commands::run(ctx, call)).await
}

/// Runs a command and posts the answer as the bot. Errors of the command itself are answered,
/// not retried.
async fn run_command<B: Bridge>(ctx: &Context, bridge: &B, call: CommandCall) -> BridgeResult {
    let prefix = command_prefix(ctx, B::NAME);
    let mut specs = bridge.commands();
    let own = specs.len();
    for builtin in builtin_specs(ctx) {
        if !specs.iter().any(|s| s.name == builtin.name) {
            specs.push(builtin);
        }
    }
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
            Some(_) => {
                let outcome = if specs[..own].iter().any(|s| s.name == call.name) {
                    bridge.handle_command(&call).await
                } else {
                    let builtin = run_builtin(ctx, &call);
                    Box::pin(builtin).await.unwrap_or_else(|| Ok(String::new()))
                };
                match outcome {
                    Ok(text) => Some(text),
                    Err(e) => Some(format!("`{}` failed: {e}", call.name)),
                }
            }
        }
    };
    if let Some(text) = reply.filter(|t| !t.is_empty()) {
        let content = RoomMessageEventContent::notice_markdown(text);
        ctx.bot().send(&call.event.room_id, &content).await?;
    }
    Ok(())
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
                                concat!(
                                    r#"{{"event_id":"$e","room_id":"!r:x","sender":"@u:x","#,
                                    r#""type":"m.room.message","content":{{"msgtype":{}"#,
                                    r#"{}{}{}{}}}}}"#,
                                ),
                                msgtype, body, format, mention, extra
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

    use ruma::{UserId, event_id, room_id, user_id};
    use serde_json::json;

    use super::*;
    use crate::{
        commands::CommandSpec,
        remote::PortalKey,
        store::MemberRow,
        testing::{MockHomeserver, test_context},
    };

    /// A bridge that logs which handler saw what. Its messages' deliveries follow the body:
    /// `unsupported` is not supported, `fail` fails the first call, anything else is sent as
    /// remote message `r-<body>`.
    #[derive(Default)]
    struct Tb {
        seen: Mutex<Vec<String>>,
        /// What reached the raw hook, by event ID.
        raw: Mutex<Vec<String>>,
        failed_once: std::sync::atomic::AtomicBool,
    }

    impl Bridge for Tb {
        type Config = crate::config::NoBridgeConfig;
        const NAME: &'static str = "tb";
        async fn create(_: Self::Config, _: Context) -> BridgeResult<Self> {
            Ok(Self::default())
        }
        async fn handle_other(&self, event: &Event) -> BridgeResult {
            self.raw.lock().unwrap().push(event.event_id.to_string());
            Ok(())
        }
        async fn handle_message(&self, m: &MatrixMessage) -> BridgeResult<Delivery> {
            let body = m.content.body();
            self.seen.lock().unwrap().push(format!("message {body}"));
            match body {
                "unsupported" => Ok(Delivery::NotSupported("no".into())),
                "fail" if !self.failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) => {
                    Err(BridgeError::new("remote hiccup"))
                }
                _ => Ok(Delivery::sent(format!("r-{body}"))),
            }
        }
        async fn handle_room_message(&self, m: &MatrixRoomMessage) -> BridgeResult {
            self.seen.lock().unwrap().push(format!("room message {}", m.content.body()));
            Ok(())
        }
        async fn handle_membership(&self, m: &MatrixMembership) -> BridgeResult {
            self.seen.lock().unwrap().push(format!("{} {}", m.target, m.membership));
            Ok(())
        }
        async fn handle_reaction(&self, r: &MatrixReaction) -> BridgeResult<Delivery> {
            self.seen.lock().unwrap().push(format!("reaction {} {}", r.target.remote.id, r.key));
            Ok(Delivery::Done)
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
        let permissions =
            "permissions: {'@admin:localhost': admin, localhost: user, other.org: relay}\n";
        let ctx = test_context(hs, permissions).await;
        let store = ctx.store();
        for room in [room_id!("!r:localhost"), room_id!("!p:localhost")] {
            store
                .set_membership(MemberRow::new(
                    room,
                    user_id!("@_test_bot:localhost"),
                    Membership::Join,
                ))
                .await
                .unwrap();
        }
        ctx
    }

    /// Makes `!p:localhost` the portal of chat `c`.
    async fn portal(ctx: &Context) -> Portal {
        let key = PortalKey::shared("c");
        let room_id = room_id!("!p:localhost").to_owned();
        ctx.store()
            .upsert_portal(&crate::store::PortalRow {
                key: key.clone(),
                room_id: Some(room_id.clone()),
                name: None,
                topic: None,
                avatar_url: None,
                metadata: None,
            })
            .await
            .unwrap();
        Portal { key, room_id }
    }

    fn event(json: serde_json::Value) -> Event {
        Event::from_json(&json.to_string()).unwrap()
    }

    fn message_in(room: &str, id: &str, sender: &str, body: &str) -> Event {
        event(json!({"event_id": id, "room_id": room, "sender": sender, "type": "m.room.message",
                     "content": {"msgtype": "m.text", "body": body}}))
    }

    fn message(sender: &str, body: &str) -> Event {
        message_in("!r:localhost", &format!("$m{}", body.len()), sender, body)
    }

    fn edit_of(id: &str, target: &EventId) -> Event {
        event(json!({"event_id": id, "room_id": "!p:localhost", "sender": "@alice:localhost",
                     "type": "m.room.message", "content": {"msgtype": "m.text", "body": "* hi",
                     "m.new_content": {"msgtype": "m.text", "body": "hi"},
                     "m.relates_to": {"rel_type": "m.replace", "event_id": target}}}))
    }

    /// The JSON bodies of the requests the mock homeserver got whose path contains `part`.
    async fn bodies_to(hs: &MockHomeserver, part: &str) -> Vec<serde_json::Value> {
        let received = hs.received().await;
        let to_part = received.into_iter().filter(|r| r.url.path().contains(part));
        to_part.map(|r| serde_json::from_slice(&r.body).unwrap_or_default()).collect()
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
        assert_eq!(*tb.seen.lock().unwrap(), ["room message !tbx list"]);
    }

    /// Member events with a user and a known membership reach `handle_membership` only; the
    /// others reach the raw hook only.
    #[tokio::test]
    async fn member_events_reach_exactly_one_handler() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let tb = Tb::default();
        let member = |id: &str, state_key: &str, content: serde_json::Value| {
            event(json!({"event_id": id, "room_id": "!r:localhost", "sender": "@alice:localhost",
                         "type": "m.room.member", "state_key": state_key, "content": content}))
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
        assert_eq!(*tb.raw.lock().unwrap(), ["$custom", "$none", "$not_a_user"]);
        assert_eq!(*tb.seen.lock().unwrap(), ["@alice:localhost join"]);
    }

    /// A bridge with both the raw hook and typed handlers sees each event once: a message goes
    /// to `handle_message` only, on its first call and on the retry after a failure.
    #[tokio::test]
    async fn the_raw_hook_never_runs_besides_a_typed_handler() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        portal(&ctx).await;
        let tb = Tb::default();
        let fail = message_in("!p:localhost", "$f", "@alice:localhost", "fail");
        assert!(route(&ctx, &tb, &fail).await.is_err());
        let bookkeeping = route(&ctx, &tb, &fail).await.unwrap();
        assert_eq!(bookkeeping.messages.len(), 1);
        route(&ctx, &tb, &message("@alice:localhost", "elsewhere")).await.unwrap();
        route(
            &ctx,
            &tb,
            &event(json!({"event_id": "$x", "room_id": "!p:localhost",
            "sender": "@alice:localhost", "type": "org.example.custom", "content": {}})),
        )
        .await
        .unwrap();
        assert_eq!(
            *tb.seen.lock().unwrap(),
            ["message fail", "message fail", "room message elsewhere"]
        );
        assert_eq!(*tb.raw.lock().unwrap(), ["$x"]);
    }

    /// What a handler returns becomes the bookkeeping: one part, several, pending, nothing.
    #[tokio::test]
    async fn deliveries_become_mappings_without_the_bridge_writing_them() {
        #[derive(Default)]
        struct Parts;
        impl Bridge for Parts {
            type Config = crate::config::NoBridgeConfig;
            const NAME: &'static str = "parts";
            async fn create(_: Self::Config, _: Context) -> BridgeResult<Self> {
                Ok(Self)
            }
            async fn handle_message(&self, m: &MatrixMessage) -> BridgeResult<Delivery> {
                Ok(match m.content.body() {
                    "one" => Delivery::sent("r1"),
                    "two" => Delivery::Sent(vec!["r2a".into(), "r2b".into()]),
                    "later" => Delivery::Pending("txn-9".into()),
                    _ => Delivery::Done,
                })
            }
        }
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let portal = portal(&ctx).await;
        let routed = |id: &'static str, body: &'static str| {
            let ctx = ctx.clone();
            async move {
                let event = message_in("!p:localhost", id, "@alice:localhost", body);
                route(&ctx, &Parts, &event).await.unwrap()
            }
        };
        let one = routed("$one", "one").await;
        let ids = |b: &Bookkeeping| b.messages.iter().map(|m| m.id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(&one), ["r1"]);
        assert_eq!(one.messages[0].portal, portal.key);
        assert_eq!(one.messages[0].event_id, "$one");
        assert_eq!(ids(&routed("$two", "two").await), ["r2a", "r2b"]);
        let later = routed("$later", "later").await;
        assert!(later.messages.is_empty());
        let pending = later.pending.unwrap();
        assert_eq!((pending.txn_id.as_str(), pending.event_id.as_str()), ("txn-9", "$later"));
        assert!(routed("$done", "done").await.is_empty());
    }

    /// With `encryption.require`, a portal's plaintext message (or edit) is refused with a send
    /// status to its sender, and the same message decrypted by the bridge device is handled.
    #[cfg(feature = "encryption")]
    #[tokio::test]
    async fn a_portal_that_requires_encryption_refuses_plaintext() {
        let hs = MockHomeserver::start().await;
        let permissions = "permissions: {localhost: user}\n\
                           encryption: {allow: true, default: true, require: true}\n";
        let ctx = test_context(&hs, permissions).await;
        portal(&ctx).await;
        let room = room_id!("!p:localhost");
        let status = "com.beeper.message_send_status";
        let statuses = hs.mock_send(room, status).as_bot().ok().expect(2).mount_as_scoped().await;
        let _notices = hs.mock_send(room, "m.room.message").as_bot().ok().mount_as_scoped().await;
        let tb = Tb::default();
        let plain = message_in("!p:localhost", "$plain", "@alice:localhost", "in clear");
        assert!(route(&ctx, &tb, &plain).await.unwrap().is_empty());
        route(&ctx, &tb, &edit_of("$edit", &plain.event_id)).await.unwrap();
        let decrypted = Event::decrypted(plain.json()).unwrap();
        route(&ctx, &tb, &decrypted).await.unwrap();
        assert_eq!(*tb.seen.lock().unwrap(), ["message in clear"]);
        let arrived = statuses.wait_until_satisfied();
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), arrived).await;
        assert!(waited.is_ok(), "each refused event got a send status");
    }

    /// An edit the bridge does not support, and an edit of a message that was never bridged,
    /// each give the sender a notice replying to the edit and a failed send status.
    #[tokio::test]
    async fn undelivered_edits_are_reported_to_their_sender() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        portal(&ctx).await;
        let room = room_id!("!p:localhost");
        let tb = Tb::default();
        let status = "com.beeper.message_send_status";
        let statuses = hs.mock_send(room, status).as_bot().ok().expect(2).mount_as_scoped().await;
        let notices = hs.mock_send(room, "m.room.message").as_bot().ok().expect(2);
        let notices = notices.mount_as_scoped().await;
        let original = message_in("!p:localhost", "$orig", "@alice:localhost", "hello");
        let recorded = route(&ctx, &tb, &original).await.unwrap();
        ctx.store().record_delivery(&recorded.messages, None).await.unwrap();
        // Tb has no edit handler: not supported.
        route(&ctx, &tb, &edit_of("$edit", &original.event_id)).await.unwrap();
        // An event that maps to nothing: unknown target.
        route(&ctx, &tb, &edit_of("$edit2", event_id!("$unknown"))).await.unwrap();
        // The reports go out in the background: wait (bounded) until both kinds arrived.
        let arrived = async {
            statuses.wait_until_satisfied().await;
            notices.wait_until_satisfied().await;
        };
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), arrived).await;
        assert!(waited.is_ok(), "the status events and notices arrived");
        let statuses = bodies_to(&hs, status).await;
        let mut targets: Vec<_> =
            statuses.iter().map(|s| s["m.relates_to"]["event_id"].as_str().unwrap()).collect();
        targets.sort_unstable();
        assert_eq!(targets, ["$edit", "$edit2"]);
        for s in &statuses {
            assert_eq!(
                (s["status"].as_str(), s["reason"].as_str()),
                (Some("FAIL_PERMANENT"), Some("m_event_unsupported"))
            );
            assert_eq!(s["m.relates_to"]["rel_type"], "m.reference");
        }
        let notices = bodies_to(&hs, "m.room.message").await;
        for n in &notices {
            assert_eq!(n["msgtype"], "m.notice");
            assert!(
                n["m.relates_to"]["m.in_reply_to"]["event_id"]
                    .as_str()
                    .unwrap()
                    .starts_with("$edit")
            );
        }
        assert_eq!(*tb.seen.lock().unwrap(), ["message hello"]);
    }

    /// A reaction reaches its handler with the remote message it targets; a reaction to an
    /// event of another portal, or to an unbridged one, reaches no handler.
    #[tokio::test]
    async fn reactions_reach_the_bridge_only_with_a_target_in_their_portal() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        portal(&ctx).await;
        let tb = Tb::default();
        let original = message_in("!p:localhost", "$orig", "@alice:localhost", "hello");
        let recorded = route(&ctx, &tb, &original).await.unwrap();
        ctx.store().record_delivery(&recorded.messages, None).await.unwrap();
        let react = |id: &str, room: &str, target: &str| {
            event(json!({"event_id": id, "room_id": room, "sender": "@alice:localhost",
                "type": "m.reaction", "content": {"m.relates_to": {"rel_type": "m.annotation",
                "event_id": target, "key": "👍"}}}))
        };
        route(&ctx, &tb, &react("$r1", "!p:localhost", "$orig")).await.unwrap();
        route(&ctx, &tb, &react("$r2", "!p:localhost", "$unknown")).await.unwrap();
        // The target is bridged, but in another room: not a target here.
        ctx.store()
            .upsert_portal(&crate::store::PortalRow {
                key: PortalKey::shared("other"),
                room_id: Some(room_id!("!r:localhost").to_owned()),
                name: None,
                topic: None,
                avatar_url: None,
                metadata: None,
            })
            .await
            .unwrap();
        route(&ctx, &tb, &react("$r3", "!r:localhost", "$orig")).await.unwrap();
        assert_eq!(*tb.seen.lock().unwrap(), ["message hello", "reaction r-hello 👍"]);
        assert!(tb.raw.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn own_events_are_suppressed() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let tb = Tb::default();
        route(&ctx, &tb, &message("@_test_ghost:localhost", "from our ghost")).await.unwrap();
        route(&ctx, &tb, &message("@_test_bot:localhost", "from our bot")).await.unwrap();
        assert!(tb.seen.lock().unwrap().is_empty());
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
        let edu = |v: serde_json::Value| crate::event::EphemeralEvent {
            kind: v["type"].as_str().unwrap().to_owned(),
            room_id: v["room_id"].as_str().map(|r| r.try_into().unwrap()),
            json: serde_json::value::to_raw_value(&v).unwrap(),
        };
        let events = [
            edu(json!({"type": "m.typing", "room_id": "!r:localhost",
                       "content": {"user_ids": ["@alice:localhost", "@_test_ghost:localhost"]}})),
            edu(json!({"type": "m.receipt", "room_id": "!r:localhost", "content": {"$e": {
                "m.read": {"@alice:localhost": {"ts": 1}, "@_test_ghost:localhost": {"ts": 2}}}}})),
            edu(json!({"type": "m.presence", "sender": "@alice:localhost",
                       "content": {"presence": "online"}})),
            edu(json!({"type": "m.presence", "sender": "@_test_ghost:localhost",
                       "content": {"presence": "online"}})),
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

    fn invite(room: &RoomId, sender: &str, target: &UserId) -> Event {
        event(json!({"event_id": format!("$inv-{sender}"), "room_id": room, "sender": sender,
                     "type": "m.room.member", "state_key": target,
                     "content": {"membership": "invite"}}))
    }

    #[tokio::test]
    async fn invites_from_permitted_users_are_accepted() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let room = room_id!("!r:localhost");
        let ghost = user_id!("@_test_new:localhost");
        hs.mock_register().ok_body(json!({"user_id": ghost})).expect(1).mount().await;
        hs.mock_join(room).as_user(ghost).ok_body(json!({"room_id": room})).expect(1).mount().await;
        route(&ctx, &Tb::default(), &invite(room, "@alice:localhost", ghost)).await.unwrap();
        assert_eq!(ctx.store().membership(room, ghost).await.unwrap(), Some(Membership::Join));
    }

    /// Users below `user` (a relay-level user, a user of an unknown server) cannot pull the
    /// bot or a ghost into a room: the invite is rejected with a reason, and nobody joins.
    #[tokio::test]
    async fn invites_from_users_without_permission_are_refused() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let room = room_id!("!elsewhere:other.org");
        let bot = user_id!("@_test_bot:localhost");
        hs.mock_join(room).never().mount().await;
        hs.mock_leave(room)
            .as_bot()
            .with_body(json!({"reason": "You are not allowed to use this bridge."}))
            .ok_body(json!({}))
            .expect(2)
            .mount()
            .await;
        let tb = Tb::default();
        route(&ctx, &tb, &invite(room, "@mallory:evil.example", bot)).await.unwrap();
        route(&ctx, &tb, &invite(room, "@relay:other.org", bot)).await.unwrap();
        assert_ne!(ctx.store().membership(room, bot).await.unwrap(), Some(Membership::Join));
        // The bridge still hears of the membership change.
        assert_eq!(tb.seen.lock().unwrap().len(), 2);
    }

    /// A leave sent by someone else is a kick; a leave after a ban an unban; the previous
    /// membership comes from `unsigned.prev_content`.
    #[tokio::test]
    async fn kicks_are_told_from_leaves() {
        #[derive(Default)]
        struct Changes(Mutex<Vec<MembershipChange>>);
        impl Bridge for Changes {
            type Config = crate::config::NoBridgeConfig;
            const NAME: &'static str = "changes";
            async fn create(_: Self::Config, _: Context) -> BridgeResult<Self> {
                Ok(Self::default())
            }
            async fn handle_membership(&self, m: &MatrixMembership) -> BridgeResult {
                self.0.lock().unwrap().push(m.change);
                Ok(())
            }
        }
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        let bridge = Changes::default();
        let member = |sender: &str, membership: &str, previous: Option<&str>| {
            let unsigned =
                previous.map_or(json!({}), |p| json!({"prev_content": {"membership": p}}));
            event(json!({"event_id": format!("${sender}{membership}"), "room_id": "!r:localhost",
                "sender": sender, "type": "m.room.member", "state_key": "@bob:localhost",
                "content": {"membership": membership}, "unsigned": unsigned}))
        };
        for e in [
            member("@bob:localhost", "join", None),
            member("@bob:localhost", "join", Some("join")),
            member("@bob:localhost", "leave", Some("join")),
            member("@alice:localhost", "leave", Some("join")),
            member("@alice:localhost", "ban", Some("join")),
            member("@alice:localhost", "leave", Some("ban")),
        ] {
            route(&ctx, &bridge, &e).await.unwrap();
        }
        use MembershipChange as C;
        assert_eq!(
            *bridge.0.lock().unwrap(),
            [C::Joined, C::ProfileChanged, C::Left, C::Kicked, C::Banned, C::Unbanned]
        );
    }

    /// When a portal's room is upgraded, the bot joins the new room and the portal moves.
    #[tokio::test]
    async fn a_tombstoned_portal_moves_to_its_new_room() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        portal(&ctx).await;
        let new_room = room_id!("!new:localhost");
        hs.mock_join(new_room).ok_body(json!({"room_id": new_room})).expect(1).mount().await;
        hs.mock_room_state(new_room).mount().await;
        let tombstone = event(json!({"event_id": "$t", "room_id": "!p:localhost",
            "sender": "@admin:localhost", "type": "m.room.tombstone", "state_key": "",
            "content": {"body": "upgraded", "replacement_room": new_room}}));
        let tb = Tb::default();
        route(&ctx, &tb, &tombstone).await.unwrap();
        let moved = ctx.portal(&PortalKey::shared("c")).await.unwrap().unwrap();
        assert_eq!(moved.room_id, new_room);
        assert_eq!(ctx.portal_for_room(room_id!("!p:localhost")).await.unwrap(), None);
        assert_eq!(*tb.raw.lock().unwrap(), ["$t"], "the raw hook still hears of it");
    }

    /// A room upgraded by someone the bridge does not act for keeps its portal where it was.
    #[tokio::test]
    async fn a_tombstone_from_a_stranger_moves_nothing() {
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        portal(&ctx).await;
        let new_room = room_id!("!elsewhere:other.org");
        hs.mock_join(new_room).never().mount().await;
        let tombstone = event(json!({"event_id": "$t", "room_id": "!p:localhost",
            "sender": "@stranger:other.org", "type": "m.room.tombstone", "state_key": "",
            "content": {"body": "moved", "replacement_room": new_room}}));
        route(&ctx, &Tb::default(), &tombstone).await.unwrap();
        let kept = ctx.portal(&PortalKey::shared("c")).await.unwrap().unwrap();
        assert_eq!(kept.room_id, room_id!("!p:localhost"));
    }

    /// Name, topic and avatar changes in a portal reach `handle_chat_info`; in another room,
    /// the raw hook.
    #[tokio::test]
    async fn room_look_changes_in_portals_reach_their_handler() {
        #[derive(Default)]
        struct Looks(Mutex<Vec<ChatInfoChange>>, Mutex<Vec<String>>);
        impl Bridge for Looks {
            type Config = crate::config::NoBridgeConfig;
            const NAME: &'static str = "looks";
            async fn create(_: Self::Config, _: Context) -> BridgeResult<Self> {
                Ok(Self::default())
            }
            async fn handle_chat_info(&self, info: &MatrixChatInfo) -> BridgeResult<Delivery> {
                self.0.lock().unwrap().push(info.change.clone());
                Ok(Delivery::Done)
            }
            async fn handle_other(&self, event: &Event) -> BridgeResult {
                self.1.lock().unwrap().push(event.event_id.to_string());
                Ok(())
            }
        }
        let hs = MockHomeserver::start().await;
        let ctx = setup(&hs).await;
        portal(&ctx).await;
        let bridge = Looks::default();
        let state = |id: &str, room: &str, kind: &str, content: serde_json::Value| {
            event(json!({"event_id": id, "room_id": room, "sender": "@alice:localhost",
                         "type": kind, "state_key": "", "content": content}))
        };
        for e in [
            state("$n", "!p:localhost", "m.room.name", json!({"name": "General"})),
            state("$t", "!p:localhost", "m.room.topic", json!({"topic": ""})),
            state("$a", "!p:localhost", "m.room.avatar", json!({"url": "mxc://x/y"})),
            state("$elsewhere", "!r:localhost", "m.room.name", json!({"name": "Other"})),
        ] {
            route(&ctx, &bridge, &e).await.unwrap();
        }
        assert_eq!(
            *bridge.0.lock().unwrap(),
            [
                ChatInfoChange::Name(Some("General".into())),
                ChatInfoChange::Topic(None),
                ChatInfoChange::Avatar(Some("mxc://x/y".into())),
            ]
        );
        assert_eq!(*bridge.1.lock().unwrap(), ["$elsewhere"]);
    }
}
