//! The built-in login commands of the bot: `login`, `cancel`, `logout`, `list-logins`,
//! `set-relay` and `unset-relay`, offered when the bridge declares login flows. A login
//! started with `login` asks for its fields one message at a time in the same room.

use std::time::Duration;

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::message::RoomMessageEventContent,
};

use super::{
    LoginDisplay, LoginError, LoginProgress, LoginStatus, LoginStep, LoginValues, state::login_name,
};
use crate::{
    commands::{CommandCall, CommandSpec},
    config::PermissionLevel,
    context::Context,
    error::{BridgeError, BridgeResult},
    event::Event,
};

/// A login driven from a room: where it is asked, and the values given so far.
#[derive(Debug, Clone)]
pub(crate) struct ChatLogin {
    process_id: String,
    room_id: OwnedRoomId,
    step: Option<LoginStep>,
    collected: LoginValues,
}

/// The built-in commands, when the bridge offers logins.
pub(crate) fn specs(ctx: &Context) -> Vec<CommandSpec> {
    let mut specs = Vec::new();
    if !ctx.logins().enabled() {
        return specs;
    }
    specs.extend([
        CommandSpec::new("login", "[FLOW]", "log in to the remote network"),
        CommandSpec::new("cancel", "", "cancel the login in progress"),
        CommandSpec::new("logout", "LOGIN", "log out of one of your logins"),
        CommandSpec::new("list-logins", "", "list your logins and their states"),
    ]);
    let relay = &ctx.config().relay;
    if relay.enabled {
        let level = if relay.admin_only { PermissionLevel::Admin } else { PermissionLevel::User };
        specs.push(
            CommandSpec::new(
                "set-relay",
                "[LOGIN]",
                "relay messages of users without a login here through your login",
            )
            .level(level),
        );
        specs.push(CommandSpec::new("unset-relay", "", "stop relaying in this room").level(level));
    }
    specs
}

/// Runs a built-in command; `None` when `call` is none of them.
pub(crate) async fn run(ctx: &Context, call: &CommandCall) -> Option<BridgeResult<String>> {
    if !specs(ctx).iter().any(|s| s.name == call.name) {
        return None;
    }
    let user = &call.event.sender;
    let room = &call.event.room_id;
    if call.portal.is_none()
        && crate::commands::is_management_room(ctx, &call.event).await.unwrap_or(false)
        && let Err(e) = ctx.store().set_management_room(user, Some(room)).await
    {
        tracing::warn!(error = %e, "could not store the management room");
    }
    Some(match call.name.as_str() {
        "login" => login(ctx, call).await,
        "cancel" => cancel(ctx, user).await,
        "logout" => logout(ctx, call).await,
        "list-logins" => list(ctx, user).await,
        "set-relay" => set_relay(ctx, call).await,
        "unset-relay" => unset_relay(ctx, call).await,
        _ => return None,
    })
}

fn chat_login(ctx: &Context, user: &UserId) -> Option<ChatLogin> {
    ctx.logins().chats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(user).cloned()
}

fn set_chat_login(ctx: &Context, user: &UserId, chat: Option<ChatLogin>) {
    let mut chats = ctx.logins().chats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match chat {
        Some(c) => chats.insert(user.to_owned(), c),
        None => chats.remove(user),
    };
}

fn err(e: LoginError) -> BridgeError {
    BridgeError::permanent(e)
}

async fn login(ctx: &Context, call: &CommandCall) -> BridgeResult<String> {
    let user = &call.event.sender;
    // What a login asks for (passwords, codes) is typed in the room: only in a DM with the bot.
    if call.portal.is_some() || !crate::commands::is_management_room(ctx, &call.event).await? {
        return Ok(
            "Log in in a private chat with me (a room with only you and me), not here.".into()
        );
    }
    let flows = ctx.login_flows();
    let flow = match (call.args.first(), flows.as_slice()) {
        (Some(id), _) => id.clone(),
        (None, [only]) => only.id.clone(),
        (None, _) => {
            let list: String = flows
                .iter()
                .map(|f| format!("\n- `{}`: {} — {}", f.id, f.name, f.description))
                .collect();
            return Ok(format!("Choose how to log in with `login FLOW`:{list}"));
        }
    };
    if let Some(old) = chat_login(ctx, user) {
        let _ = ctx.cancel_login(user, &old.process_id).await;
        set_chat_login(ctx, user, None);
    }
    let progress = ctx.start_login(user, &flow).await.map_err(err)?;
    let chat = ChatLogin {
        process_id: progress.process_id.clone(),
        room_id: call.event.room_id.clone(),
        step: None,
        collected: LoginValues::new(),
    };
    set_chat_login(ctx, user, Some(chat));
    Ok(present(ctx, user, progress))
}

async fn cancel(ctx: &Context, user: &UserId) -> BridgeResult<String> {
    let Some(chat) = chat_login(ctx, user) else {
        return Ok("No login in progress.".into());
    };
    set_chat_login(ctx, user, None);
    let _ = ctx.cancel_login(user, &chat.process_id).await;
    Ok("Login cancelled.".into())
}

async fn logout(ctx: &Context, call: &CommandCall) -> BridgeResult<String> {
    let user = &call.event.sender;
    let id = call.arg(0, "LOGIN")?;
    ctx.logout(user, &id.into()).await.map_err(err)?;
    Ok(format!("Logged out of `{id}`."))
}

async fn list(ctx: &Context, user: &UserId) -> BridgeResult<String> {
    let logins = ctx.store().logins_of(user).await?;
    if logins.is_empty() {
        return Ok("You have no logins. Log in with `login`.".into());
    }
    let mut out = String::from("Your logins:\n");
    for l in &logins {
        let reason = l.state_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        out.push_str(&format!("\n- `{}` {}: {}{reason}", l.id, login_name(l), l.state));
    }
    Ok(out)
}

async fn set_relay(ctx: &Context, call: &CommandCall) -> BridgeResult<String> {
    let Some(portal) = &call.portal else {
        return Ok("Use this in a bridged room.".into());
    };
    let user = &call.event.sender;
    // Only a login that is in this chat can speak in it.
    let mut in_portal = ctx.store().user_logins_in_portal(user, &portal.key).await?;
    if let Some(receiver) = &portal.key.receiver
        && let Some(login) = ctx.store().login(receiver).await?
        && login.user_id == *user
    {
        in_portal.insert(0, login);
    }
    let login = match call.args.first() {
        Some(id) => in_portal.into_iter().find(|l| l.id.as_str() == id),
        None => in_portal.into_iter().next(),
    };
    let Some(login) = login else {
        return Ok("None of your logins is in this chat; see `list-logins`.".into());
    };
    ctx.store().set_portal_relay(&portal.key, Some(&login.id)).await?;
    Ok(format!(
        "Messages of users without a login here are now relayed through **{}**.",
        login_name(&login)
    ))
}

async fn unset_relay(ctx: &Context, call: &CommandCall) -> BridgeResult<String> {
    let Some(portal) = &call.portal else {
        return Ok("Use this in a bridged room.".into());
    };
    ctx.store().set_portal_relay(&portal.key, None).await?;
    Ok("This room has no relay any more.".into())
}

/// Takes a message as the answer to the login in progress in its room, when there is one and
/// the message is no command. Returns whether it did.
pub(crate) async fn take_answer(
    ctx: &Context,
    event: &Event,
    body: &str,
    prefix: &str,
) -> BridgeResult<bool> {
    let user = &event.sender;
    let Some(mut chat) = chat_login(ctx, user) else { return Ok(false) };
    let body = body.trim();
    let first = body.split_whitespace().next().unwrap_or_default().to_lowercase();
    if chat.room_id != event.room_id
        || body.starts_with(prefix)
        || matches!(first.as_str(), "cancel" | "login" | "help")
    {
        return Ok(false);
    }
    let Some(step) = chat.step.clone() else { return Ok(false) };
    let reply = match &step {
        LoginStep::Fields { fields, step_id, .. } => {
            let Some(field) = fields.iter().find(|f| !chat.collected.contains_key(&f.id)) else {
                return Ok(false);
            };
            if field.kind == super::FieldKind::Password {
                let bot = ctx.bot();
                if let Err(e) = bot.redact(&event.room_id, &event.event_id).reason("password").await
                {
                    tracing::warn!(error = %e, "could not redact a password message");
                }
            }
            if let Err(problem) = field.validate(body) {
                Some(format!("{problem}. Send your **{}** again, or `cancel`.", field.name))
            } else {
                chat.collected.insert(field.id.clone(), body.to_owned());
                match fields.iter().find(|f| !chat.collected.contains_key(&f.id)) {
                    Some(next) => {
                        let text = ask_field(next);
                        set_chat_login(ctx, user, Some(chat));
                        Some(text)
                    }
                    None => {
                        let values = std::mem::take(&mut chat.collected);
                        set_chat_login(ctx, user, Some(chat.clone()));
                        Some(submit(ctx, user, &chat.process_id, step_id, values).await)
                    }
                }
            }
        }
        LoginStep::Cookies { step_id, .. } => {
            let values: LoginValues = body
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            if let Err(e) =
                ctx.bot().redact(&event.room_id, &event.event_id).reason("cookies").await
            {
                tracing::warn!(error = %e, "could not redact a cookies message");
            }
            Some(submit(ctx, user, &chat.process_id, step_id, values).await)
        }
        _ => None,
    };
    let Some(reply) = reply else { return Ok(false) };
    say(ctx, &event.room_id, &reply).await;
    Ok(true)
}

async fn submit(
    ctx: &Context,
    user: &UserId,
    process_id: &str,
    step_id: &str,
    values: LoginValues,
) -> String {
    match ctx.submit_login(user, process_id, step_id, values).await {
        Ok(progress) => present(ctx, user, progress),
        Err(LoginError::BadInput(problem)) => {
            // The step stays: ask for its fields again from the first.
            let again = chat_login(ctx, user).and_then(|c| c.step).map(|s| step_text(&s));
            format!("{problem}. {}", again.unwrap_or_default())
        }
        Err(e) => {
            set_chat_login(ctx, user, None);
            format!("Login failed: {e}")
        }
    }
}

fn ask_field(field: &super::LoginField) -> String {
    let about = if field.description.is_empty() {
        String::new()
    } else {
        format!(" ({})", field.description)
    };
    format!("Send your **{}**{about}.", field.name)
}

fn step_text(step: &LoginStep) -> String {
    match step {
        LoginStep::Fields { instructions, fields, .. } => {
            let first = fields.first().map(ask_field).unwrap_or_default();
            format!("{instructions}\n\n{first}")
        }
        LoginStep::DisplayAndWait { instructions, display, .. } => {
            let shown = match display {
                LoginDisplay::Qr(data) => format!(
                    "\n\nThe QR code's data (shown as text; render it as a QR code, or use the provisioning API): `{data}`"
                ),
                LoginDisplay::Code(code) => format!("\n\nYour code: **`{code}`**"),
                LoginDisplay::Nothing => String::new(),
            };
            format!("{instructions}{shown}")
        }
        LoginStep::Cookies { instructions, url, cookies, .. } => format!(
            "{instructions}\n\nLog in at {url}, then send the cookies {} as `name=value; name=value`.",
            cookies.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
        ),
        LoginStep::Complete(new) => format!("Logged in as **{}**.", new.remote_name),
    }
}

/// What the user is told of a login's progress; remembers the step, and for a
/// display-and-wait step starts waiting for its end in the background.
fn present(ctx: &Context, user: &UserId, progress: LoginProgress) -> String {
    let LoginProgress { process_id, seq, status } = progress;
    match status {
        LoginStatus::Step(step) => {
            let Some(mut chat) = chat_login(ctx, user).filter(|c| c.process_id == process_id)
            else {
                return step_text(&step);
            };
            chat.step = Some(step.clone());
            chat.collected.clear();
            let room = chat.room_id.clone();
            set_chat_login(ctx, user, Some(chat));
            if let LoginStep::DisplayAndWait { step_id, .. } = &step {
                tokio::spawn(narrate(
                    ctx.clone(),
                    user.to_owned(),
                    room,
                    process_id,
                    step_id.clone(),
                    seq,
                ));
            }
            step_text(&step)
        }
        LoginStatus::Working => "Working on it…".into(),
        LoginStatus::Done(login) => {
            set_chat_login(ctx, user, None);
            format!("Logged in as **{}** (`{}`).", login_name(&login), login.id)
        }
        LoginStatus::Failed(e) => {
            set_chat_login(ctx, user, None);
            format!("Login failed: {e}")
        }
        LoginStatus::Cancelled => {
            set_chat_login(ctx, user, None);
            "Login cancelled.".into()
        }
    }
}

/// Waits for a display-and-wait step to end and posts what came next.
async fn narrate(
    ctx: Context,
    user: OwnedUserId,
    room: OwnedRoomId,
    process_id: String,
    step_id: String,
    seq: u64,
) {
    loop {
        match ctx.wait_login(&user, &process_id, &step_id, Duration::from_secs(60)).await {
            Ok(progress) if progress.seq == seq => {}
            Ok(progress) => {
                let text = present(&ctx, &user, progress);
                say(&ctx, &room, &text).await;
                return;
            }
            Err(_) => {
                // The login ended (cancelled, or dropped when it timed out).
                if chat_login(&ctx, &user).is_some_and(|c| c.process_id == process_id) {
                    set_chat_login(&ctx, &user, None);
                    say(&ctx, &room, "The login ended.").await;
                }
                return;
            }
        }
    }
}

async fn say(ctx: &Context, room: &RoomId, markdown: &str) {
    let content = RoomMessageEventContent::notice_markdown(markdown);
    if let Err(e) = ctx.bot().send(room, &content).await {
        tracing::warn!(error = %e, "could not post a login message");
    }
}
