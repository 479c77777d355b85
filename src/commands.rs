//! Bot commands: what a bridge offers ([`CommandSpec`]), what a user gave ([`CommandCall`]), how
//! a message is recognised as one, and the generated `help`.

use ruma::events::room::message::RoomMessageEventContent;

use crate::{
    Context,
    config::PermissionLevel,
    error::{BridgeError, BridgeResult},
    event::Event,
    remote::Portal,
    store::Membership,
};

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

/// The command prefix: configured, or `!` and the bridge's name.
pub(crate) fn command_prefix(ctx: &Context, bridge_name: &str) -> String {
    ctx.config().commands.prefix.clone().unwrap_or_else(|| format!("!{bridge_name}"))
}

/// Recognises a command: the prefix followed by white space, or any text in a DM with the bot.
pub(crate) async fn command_call(
    ctx: &Context,
    prefix: &str,
    event: &Event,
    content: &RoomMessageEventContent,
    portal: Option<Portal>,
) -> BridgeResult<Option<CommandCall>> {
    let body = content.body().trim();
    let rest = match body.strip_prefix(prefix) {
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

/// A DM with the bot: the bot and the sender are the only joined members.
pub(crate) async fn is_management_room(ctx: &Context, event: &Event) -> BridgeResult<bool> {
    let joined = ctx.bot().members_with(&event.room_id, Membership::Join).await?;
    Ok(joined.len() == 2
        && joined.iter().any(|m| m.user_id == ctx.bot_user_id())
        && joined.iter().any(|m| m.user_id == event.sender))
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
}
