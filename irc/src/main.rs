//! mxbridge-irc: a Matrix ⇄ IRC bridge on the mxbridge framework.
//!
//! Each Matrix user logs in with a nick (the bot's `login` command or the provisioning API)
//! and gets an IRC connection of their own. `join #channel` makes a portal of a channel,
//! private messages open a DM portal per login, IRC nicks are ghosts. Users with the `relay`
//! level and no login are relayed through a portal's relay login (`set-relay`). See
//! `irc/README.md` for what maps to what.

mod bridge;
mod conn;
mod format;
mod ghosts;
mod login;
mod proto;

fn main() -> std::process::ExitCode {
    mxbridge::cli::main::<bridge::Irc>(
        mxbridge::about!().with_description("A Matrix ⇄ IRC bridge with per-user connections"),
    )
}
