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
import time

from mautrix_bench_common import GHOST, prepared_appservice, room_id


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hs-port", type=int, required=True)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()

    appservice = await prepared_appservice(args.hs_port, "hs_token_unused", args.rooms)
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
