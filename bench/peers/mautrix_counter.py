"""A mautrix-python 0.21 appservice whose event handler only counts events.

The peer side of bench/scripts/intake.sh: `python mautrix_counter.py --port P --hs-token T`.
It prints `pid=... port=...` once listening and the number of events handled on SIGTERM.
"""

import argparse
import asyncio
import os
import signal
import sys
import tempfile

from mautrix.appservice import AppService
from mautrix.appservice.state_store.file import FileASStateStore


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hs-token", required=True)
    args = parser.parse_args()

    state_dir = tempfile.mkdtemp(prefix="mautrix-bench-")
    appservice = AppService(
        server="http://127.0.0.1:1",
        domain="localhost",
        as_token="as_token_bench_0123456789abcdef",
        hs_token=args.hs_token,
        bot_localpart="_bench_bot",
        id="bench",
        state_store=FileASStateStore(path=os.path.join(state_dir, "state.json"), binary=False),
    )
    count = 0

    @appservice.matrix_event_handler
    async def on_event(_event) -> None:
        nonlocal count
        count += 1

    await appservice.start(host="127.0.0.1", port=args.port)
    print(f"pid={os.getpid()} port={args.port} mode=mautrix-python", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await appservice.stop()
    print(f"events handled: {count}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
