"""What the mautrix-python peers of the bridging and pipeline benchmarks share: the appservice
on the stub homeserver, and the ghost made registered and joined (with power, and the rooms'
create events) in its state store, so each bridged event is one request."""

import os
import tempfile

from mautrix.appservice import AppService
from mautrix.appservice.state_store.file import FileASStateStore
from mautrix.types import Membership

GHOST = "@_bench_ghost:localhost"


def room_id(r: int) -> str:
    """The load's room number r, as loadgen and bridge_bench name it."""
    return f"!bench{r:06}qzXHbLcFoMiWdNrT:localhost"


async def prepared_appservice(hs_port: int, hs_token: str, rooms: int) -> AppService:
    state_dir = tempfile.mkdtemp(prefix="mautrix-bench-")
    appservice = AppService(
        server=f"http://127.0.0.1:{hs_port}",
        domain="localhost",
        as_token="as_token_bench_0123456789abcdef",
        hs_token=hs_token,
        bot_localpart="_bench_bot",
        id="bench",
        state_store=FileASStateStore(path=os.path.join(state_dir, "state.json"), binary=False),
    )
    store = appservice.state_store
    await store.registered(GHOST)
    for r in range(rooms):
        room = room_id(r)
        await store.set_membership(room, GHOST, Membership.JOIN)
        # The intent checks the ghost's power level (and the create event) before sending.
        await store.set_power_levels(room, {"users": {GHOST: 100}})
        await store.set_create(
            {
                "type": "m.room.create",
                "room_id": room,
                "event_id": f"$create{r}",
                "sender": "@admin:localhost",
                "state_key": "",
                "origin_server_ts": 0,
                "content": {"room_version": "10", "creator": "@admin:localhost"},
            }
        )
    return appservice
