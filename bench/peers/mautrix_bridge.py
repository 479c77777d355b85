"""A mautrix-python 0.21 appservice that bridges every message with one ghost send.

The peer side of bench/scripts/bridging.sh:
`python mautrix_bridge.py --port P --hs-token T --hs-port S [--rooms N]`.

Every m.room.message is sent on by the ghost @_bench_ghost:localhost with
`IntentAPI.send_text` to the stub homeserver on 127.0.0.1:S (bench/src/bin/bridge_bench.rs
--mode stub). The ghost is marked registered and joined to the load's rooms in the state store
first, with power levels and a create event, so each send is one request. mautrix runs every event's handler as its own task, so a
per-room asyncio.Lock (FIFO, taken before the first await) keeps the sends of a room in order.
It prints `pid=... port=...` once listening.
"""

import argparse
import asyncio
import os
import signal
import sys

from mautrix.types import EventType

from mautrix_bench_common import GHOST, prepared_appservice


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hs-port", type=int, required=True)
    parser.add_argument("--hs-token", required=True)
    parser.add_argument("--rooms", type=int, default=50)
    args = parser.parse_args()

    appservice = await prepared_appservice(args.hs_port, args.hs_token, args.rooms)

    locks: dict[str, asyncio.Lock] = {}
    sent = 0

    @appservice.matrix_event_handler
    async def on_event(evt) -> None:
        nonlocal sent
        if evt.type != EventType.ROOM_MESSAGE or evt.sender == GHOST:
            return
        lock = locks.setdefault(evt.room_id, asyncio.Lock())
        async with lock:
            await appservice.intent.user(GHOST).send_text(evt.room_id, evt.content.body)
            sent += 1

    await appservice.start(host="127.0.0.1", port=args.port)
    print(f"pid={os.getpid()} port={args.port} mode=mautrix-python", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await appservice.stop()
    print(f"messages sent: {sent}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
