//! The smallest complete bridge: invite one of its ghosts to a room and it answers each message.
//!
//! Run with (after `scripts/demo.sh` set up Synapse and the files):
//!
//! ```text
//! cargo run --example echo -- -c config.yaml run
//! ```
//!
//! The "remote network" here is the echo itself: every message from a human in a room with a
//! ghost comes back from that ghost as `echo: <text>`. The framework accepts the invite (the ghost
//! joins), suppresses the ghost's own messages (no loop), and keeps the room's members cached.

use mxbridge::{Bridge, BridgeResult, Context, MatrixRoomMessage};

/// The echo bridge keeps nothing but the framework's handle.
#[derive(Debug)]
struct Echo {
    ctx: Context,
}

impl Bridge for Echo {
    type Config = mxbridge::config::NoBridgeConfig;
    const NAME: &'static str = "echo";

    async fn create(_config: Self::Config, ctx: Context) -> BridgeResult<Self> {
        Ok(Self { ctx })
    }

    // The rooms here are no portals: the ghosts were invited into ordinary rooms.
    async fn handle_room_message(&self, message: &MatrixRoomMessage) -> BridgeResult {
        let text = format!("echo: {}", message.content.body());
        let room = &message.event.room_id;
        for ghost in self.ctx.ghosts_in(room).await? {
            self.ctx.intent(&ghost)?.send_text(room, &text).await?;
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
    mxbridge::cli::main::<Echo>(mxbridge::about!().with_description("An echo bridge"))
}
