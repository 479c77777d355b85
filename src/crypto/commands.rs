//! The bridge device's commands, for admins: `encryption` tells its state, `encryption
//! cross-sign` tries its cross-signing again, `encryption reset` replaces the device at the next
//! start.

use crate::{CommandCall, CommandSpec, Context, bridge::BridgeResult, config::PermissionLevel};

pub(crate) fn specs(ctx: &Context) -> Vec<CommandSpec> {
    if !ctx.config().encryption.allow {
        return Vec::new();
    }
    vec![
        CommandSpec::new(
            "encryption",
            "[cross-sign | reset]",
            "the bridge device: its keys, cross-signing, and what waits for keys; reset replaces \
             it at the next start",
        )
        .level(PermissionLevel::Admin),
    ]
}

/// Runs an encryption command; `None` when `call` is none of them.
pub(crate) async fn run(ctx: &Context, call: &CommandCall) -> Option<BridgeResult<String>> {
    if call.name != "encryption" || !ctx.config().encryption.allow {
        return None;
    }
    Some(Box::pin(status(ctx, call)).await)
}

async fn status(ctx: &Context, call: &CommandCall) -> BridgeResult<String> {
    if call.args.first().map(String::as_str) == Some("reset") {
        super::request_reset(ctx.store()).await?;
        return Ok("The bridge device will be replaced when the bridge next starts: restart it. \
                   Messages encrypted for the old device can then no longer be decrypted."
            .into());
    }
    let Some(device) = ctx.bridge_device() else {
        return Ok("The bridge device has not started yet (see the bridge's log).".into());
    };
    let mut out = String::new();
    if call.args.first().map(String::as_str) == Some("cross-sign") {
        // The stored mark is what keeps a start from uploading again: a retry asked for by an
        // admin clears it.
        ctx.store().kv_delete(super::KV_NAMESPACE, super::device::KV_CROSS_SIGNED).await?;
        match device.cross_sign(ctx.store()).await {
            Ok(()) => out.push_str("Cross-signed the bridge device.\n"),
            Err(e) => out.push_str(&format!("Cross-signing failed: {e}\n")),
        }
    }
    let keys = device.machine().identity_keys();
    let cross = device.machine().cross_signing_status().await;
    let (inputs, awaiting) = ctx.store().crypto_backlog().await?;
    out.push_str(&format!(
        "Bridge device `{}`, ed25519 `{}`.\nCross-signing: {}.\nTo-device input not yet read: {inputs}. \
         Events waiting for their room key: {awaiting}.",
        device.device_id(),
        keys.ed25519.to_base64(),
        if cross.has_master && cross.has_self_signing { "set up" } else { "not set up" },
    ));
    Ok(out)
}
