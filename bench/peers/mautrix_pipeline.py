"""The remote -> Matrix side with mautrix-python 0.21: the peer of bridge_bench --mode pipeline.

`python mautrix_pipeline.py --port P --hs-port S [--rooms N] [--events E]`

It sends the same events as mxbridge's pipeline benchmark (per portal, nine messages numbered
for the stub's order check, then a reaction to the last) through IntentAPI to the stub
homeserver (bridge_bench --mode stub), from one asyncio.Queue and one worker per portal, the
usual shape of a mautrix-python bridge's portal loop. The ghost is marked registered and joined
with power in the state store first, so each event is one request. The queues are in memory:
unlike mxbridge's, nothing survives a crash. Prints one JSON line with the rate.
"""

import argparse
import asyncio
import json
import os
import tempfile
import time

from mautrix.appservice import AppService
from mautrix.appservice.state_store.file import FileASStateStore
from mautrix.types import Membership

GHOST = "@_bench_ghost:localhost"


def room_id(r: int) -> str:
    return f"!bench{r:06}qzXHbLcFoMiWdNrT:localhost"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hs-port", type=int, required=True)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()

    state_dir = tempfile.mkdtemp(prefix="mautrix-pipeline-bench-")
    appservice = AppService(
        server=f"http://127.0.0.1:{args.hs_port}",
        domain="localhost",
        as_token="as_token_bench_0123456789abcdef",
        hs_token="hs_token_unused",
        bot_localpart="_bench_bot",
        id="bench",
        state_store=FileASStateStore(path=os.path.join(state_dir, "state.json"), binary=False),
    )
    store = appservice.state_store
    await store.registered(GHOST)
    for r in range(args.rooms):
        room = room_id(r)
        await store.set_membership(room, GHOST, Membership.JOIN)
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
    await appservice.start(host="127.0.0.1", port=args.port)
    ghost = appservice.intent.user(GHOST)

    queues = [asyncio.Queue() for _ in range(args.rooms)]
    sent: dict[str, str] = {}

    async def portal_worker(r: int) -> None:
        queue = queues[r]
        room = room_id(r)
        while True:
            item = await queue.get()
            if item is None:
                return
            kind, remote_id, payload = item
            if kind == "message":
                sent[remote_id] = await ghost.send_text(room, payload)
            else:
                await ghost.react(room, sent[payload], "\N{THUMBS UP SIGN}")

    started = time.perf_counter()
    workers = [asyncio.create_task(portal_worker(r)) for r in range(args.rooms)]
    next_in_room = [0] * args.rooms
    for n in range(args.events):
        r = n % args.rooms
        seq = next_in_room[r]
        if seq % 10 == 9:
            queues[r].put_nowait(("reaction", f"r{r}-{seq}", f"m{r}-{seq - 1}"))
        else:
            queues[r].put_nowait(("message", f"m{r}-{seq}", f"Message number {seq} in chat {r}"))
        next_in_room[r] += 1
    queued_s = time.perf_counter() - started
    for queue in queues:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    total_s = time.perf_counter() - started
    await appservice.stop()
    print(
        json.dumps(
            {
                "side": "mautrix-python",
                "events": args.events,
                "queued_s": queued_s,
                "total_s": total_s,
                "events_per_s": args.events / total_s,
                "durable": "no",
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
