//! The smallest complete bridge: invite one of its ghosts to a room and it answers each message.
//!
//! Run with (after `scripts/demo.sh` set up Synapse and the files):
//!
//! ```text
//! cargo run --example echo -- -c config.yaml run
//! ```
//!
//! The "remote network" here is the echo itself: every text message from a human in a room with
//! a ghost comes back from that ghost as `echo: <text>`.

use mxbridge::{Bridge, BridgeResult, Context, Event, store::Membership};
use ruma::{
    OwnedUserId,
    events::room::{member::RoomMemberEventContent, message::RoomMessageEventContent},
};

/// The echo bridge keeps nothing but the framework's handle.
struct Echo {
    ctx: Context,
}

impl Bridge for Echo {
    type Config = mxbridge::config::NoBridgeConfig;
    const NAME: &'static str = "echo";

    async fn create(_config: Self::Config, ctx: Context) -> BridgeResult<Self> {
        Ok(Self { ctx })
    }

    async fn handle_event(&self, event: &Event) -> BridgeResult {
        let registration = self.ctx.registration();
        match event.kind.as_str() {
            // A human invited one of our ghosts (or the bot): accept.
            "m.room.member" => {
                let Some(target) = event.state_key.as_deref() else { return Ok(()) };
                let content: RoomMemberEventContent = event.content()?;
                let target: OwnedUserId = target.try_into()?;
                if content.membership.as_str() == "invite"
                    && registration.is_user_in_namespace(&target)
                {
                    self.ctx.intent(&target)?.ensure_joined(&event.room_id).await?;
                }
            }
            // A human spoke: every ghost in the room answers.
            "m.room.message" if !registration.is_user_in_namespace(&event.sender) => {
                let content: RoomMessageEventContent = event.content()?;
                let text = format!("echo: {}", content.body());
                let members =
                    self.ctx.store().members_with(event.room_id.as_str(), Membership::Join).await?;
                for member in members {
                    let user: OwnedUserId = member.user_id.as_str().try_into()?;
                    if registration.is_user_in_namespace(&user) {
                        self.ctx.intent(&user)?.send_text(&event.room_id, &text, None).await?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn query_user(&self, user_id: &ruma::UserId) -> BridgeResult<bool> {
        // Any ghost name exists: register it when the homeserver asks.
        self.ctx.intent(user_id)?.ensure_registered().await?;
        Ok(true)
    }
}

fn main() -> std::process::ExitCode {
    mxbridge::cli::main::<Echo>()
}
