//! The bot's built-in portal commands: `resync` (bring this portal in line with the remote
//! chat), `delete-portal` and, in bridges with logins, `cleanup-portals`.

use crate::{
    commands::{CommandCall, CommandSpec},
    config::PermissionLevel,
    context::Context,
    error::{BridgeError, BridgeResult},
    remote::RemoteEvent,
};

/// The portal commands.
pub(crate) fn specs(ctx: &Context) -> Vec<CommandSpec> {
    let mut specs = vec![
        CommandSpec::new("resync", "", "bring this portal in line with the remote chat"),
        CommandSpec::new("delete-portal", "", "delete this portal (the remote chat stays)")
            .level(PermissionLevel::Admin),
    ];
    if ctx.logins().enabled() {
        specs.push(
            CommandSpec::new("cleanup-portals", "", "delete the portals no login is in")
                .level(PermissionLevel::Admin),
        );
    }
    specs
}

/// Runs a portal command; `None` when `call` is none of them.
pub(crate) async fn run(ctx: &Context, call: &CommandCall) -> Option<BridgeResult<String>> {
    if !specs(ctx).iter().any(|s| s.name == call.name) {
        return None;
    }
    Some(match call.name.as_str() {
        "resync" => resync(ctx, call).await,
        "delete-portal" => delete(ctx, call).await,
        "cleanup-portals" => cleanup(ctx).await,
        _ => return None,
    })
}

fn not_a_portal() -> BridgeError {
    BridgeError::permanent("this room is not a portal")
}

async fn resync(ctx: &Context, call: &CommandCall) -> BridgeResult<String> {
    let portal = call.portal.as_ref().ok_or_else(not_a_portal)?;
    let _queued = ctx.queue_remote(&portal.key, &RemoteEvent::ChatResync).await?;
    Ok("Resyncing this portal with the remote chat.".into())
}

async fn delete(ctx: &Context, call: &CommandCall) -> BridgeResult<String> {
    let portal = call.portal.as_ref().ok_or_else(not_a_portal)?;
    // Said before: the bot is gone afterwards.
    let text = "Deleting this portal; the remote chat stays.";
    ctx.bot().send_notice(&portal.room_id, text).await?;
    let reason = format!("Portal deleted by {}", call.event.sender);
    ctx.delete_portal(&portal.key, &reason).await?;
    Ok(String::new())
}

async fn cleanup(ctx: &Context) -> BridgeResult<String> {
    let deleted = ctx.cleanup_portals().await?;
    Ok(match deleted.len() {
        0 => "No portal is without logins.".into(),
        n => {
            let list: Vec<String> = deleted.iter().map(|k| format!("- {k}")).collect();
            format!("Deleted {n} portal(s) no login was in:\n\n{}", list.join("\n"))
        }
    })
}
