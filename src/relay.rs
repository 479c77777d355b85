//! Which login a Matrix event in a portal goes out through, and relay mode.
//!
//! For a bridge with logins, an event in a portal goes out through the sender's own login in
//! that portal when their `permissions:` level is at least `user`; else, when `relay.enabled` and the sender's `permissions:` level is at least
//! `relay`, through the portal's relay login (set with `set-relay`), its message rewritten by
//! the `relay.message_formats` template of its type; else it is not bridged, and the sender
//! gets a notice and a failed send status. Relayed messages are mapped like any other, so
//! edits and redactions of them follow.

use ruma::events::room::message::{MessageType, RoomMessageEventContent, TextMessageEventContent};

use crate::{
    config::PermissionLevel,
    context::Context,
    error::BridgeResult,
    event::{Event, Sender},
    login::SendVia,
    remote::Portal,
};

/// The login an event of `sender` in `portal` goes out through: `Ok(None)` for bridges
/// without logins, `Err(reason)` when no login may carry it.
pub(crate) async fn via_for(
    ctx: &Context,
    sender: &Sender,
    portal: &Portal,
) -> BridgeResult<Result<Option<SendVia>, String>> {
    if !ctx.logins().enabled() {
        return Ok(Ok(None));
    }
    let store = ctx.store();
    // A user below `user` sends through no login of their own, even one stored before their
    // permission was taken away.
    let mut own = if sender.level >= PermissionLevel::User {
        store.user_logins_in_portal(&sender.user_id, &portal.key).await?
    } else {
        Vec::new()
    };
    // A portal of one login's own chat (a DM) is that login's.
    if let Some(receiver) = &portal.key.receiver
        && sender.level >= PermissionLevel::User
        && let Some(login) = store.login(receiver).await?
        && login.user_id == sender.user_id
    {
        own.insert(0, login);
    }
    // A login the user must renew cannot send; one that is reconnecting still queues.
    if let Some(login) = own.into_iter().find(|l| !l.state.needs_user()) {
        return Ok(Ok(Some(SendVia::Own(login))));
    }
    let relay = &ctx.config().relay;
    if !relay.enabled || sender.level < PermissionLevel::Relay {
        return Ok(Err(if sender.level < PermissionLevel::Relay {
            "you are not allowed to use this bridge".into()
        } else {
            "you are not logged in to this chat: log in with the bot's `login` command".into()
        }));
    }
    match store.portal_relay(&portal.key).await? {
        Some(login) if !login.state.needs_user() => Ok(Ok(Some(SendVia::Relay(login)))),
        Some(_) => Ok(Err("the relay of this room is logged out".into())),
        None => Ok(Err(
            "you are not logged in to this chat, and it has no relay: log in with the bot's `login` command"
                .into(),
        )),
    }
}

/// Rewrites a relayed message by its type's template: text, notices and emotes become text
/// (plain and, when there was one, HTML), media keep their type with a new caption.
pub(crate) async fn format_relayed(
    ctx: &Context,
    event: &Event,
    content: &mut RoomMessageEventContent,
) {
    let name = match ctx.bot().display_name(&event.room_id, &event.sender).await {
        Ok(Some(name)) => name,
        _ => event.sender.localpart().to_owned(),
    };
    let relay = &ctx.config().relay;
    let id = event.sender.as_str();
    let msgtype = content.msgtype().to_owned();
    let fill = |body: &str| relay.format(&msgtype, &name, id, body);
    let fill_html =
        |html: &str| relay.format_html(&msgtype, &escape_html(&name), &escape_html(id), html);
    let replaced = match &mut content.msgtype {
        MessageType::Text(t) => {
            Some((t.body.clone(), t.formatted.as_ref().map(|f| f.body.clone())))
        }
        MessageType::Notice(t) => {
            Some((t.body.clone(), t.formatted.as_ref().map(|f| f.body.clone())))
        }
        MessageType::Emote(t) => {
            Some((t.body.clone(), t.formatted.as_ref().map(|f| f.body.clone())))
        }
        MessageType::Image(m) => {
            caption(&mut m.body, &mut m.filename, fill);
            None
        }
        MessageType::File(m) => {
            caption(&mut m.body, &mut m.filename, fill);
            None
        }
        MessageType::Audio(m) => {
            caption(&mut m.body, &mut m.filename, fill);
            None
        }
        MessageType::Video(m) => {
            caption(&mut m.body, &mut m.filename, fill);
            None
        }
        MessageType::Location(m) => {
            m.body = fill(&m.body);
            None
        }
        _ => None,
    };
    if let Some((body, html)) = replaced {
        content.msgtype = MessageType::Text(match html {
            Some(html) => TextMessageEventContent::html(fill(&body), fill_html(&html)),
            None => TextMessageEventContent::plain(fill(&body)),
        });
    }
}

/// A file's body becomes the filled template; its name is kept as the file name.
fn caption(body: &mut String, filename: &mut Option<String>, fill: impl Fn(&str) -> String) {
    if filename.is_none() {
        *filename = Some(body.clone());
    }
    *body = fill(body);
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
