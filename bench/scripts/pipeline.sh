#!/usr/bin/env bash
# The remote -> Matrix pipeline, side by side: mxbridge's (every event committed to SQLite before
# it is queued, one worker per portal) against mautrix-python's IntentAPI fed from one asyncio
# queue per portal (in memory), both sending the same events to the same stub homeserver
# (bridge_bench --mode stub), which checks the order per room. Rounds are interleaved, each
# side with a fresh stub; the load tool's place is taken by the two programs themselves.
# mxbridge's events are queued by --producers concurrent producers (default: one per portal),
# each waiting for an event's commit before it queues the next, or --batch events at a time
# (queue_remote_batch).
# Usage: bench/scripts/pipeline.sh [--rounds N] [--events E] [--rooms R] [--producers P] [--batch B]
#   MXB_CACHE (default ~/.cache/mxbridge): the mautrix venv and the build (target-bench)
#   MXB_BENCH_BIN: a bridge_bench binary to use instead of building one (an older build, to
#   compare)
#   MXB_DB=postgres: mxbridge's queue on PostgreSQL (127.0.0.1:5432, database test, a fresh schema)
#   MXB_PIN=0 turns off CPU pinning (default: stub on CPU 0, the side measured on CPU 1)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=3; EVENTS=20000; ROOMS=50; PRODUCERS=; BATCH=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --events) EVENTS=$2; shift 2 ;;
        --rooms) ROOMS=$2; shift 2 ;;
        --producers) PRODUCERS=$2; shift 2 ;;
        --batch) BATCH=$2; shift 2 ;;
        *) echo "usage: $0 [--rounds N] [--events E] [--rooms R] [--producers P] [--batch B]" >&2; exit 2 ;;
    esac
done
PRODUCERS=${PRODUCERS:-$ROOMS}
CACHE=${MXB_CACHE:-$HOME/.cache/mxbridge}
if [ -n "${MXB_BENCH_BIN:-}" ]; then
    EX=$(cd "$(dirname "$MXB_BENCH_BIN")" && pwd)
else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target-bench}
    cargo build --release -q -p mxbridge-bench --bin bridge_bench
    EX=$CARGO_TARGET_DIR/release
fi
VENV=$CACHE/peers/mautrix-venv
if ! "$VENV/bin/python" -c 'import importlib.metadata as m; assert m.version("mautrix").startswith("0.21.")' 2>/dev/null; then
    echo "installing mautrix-python 0.21 into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'mautrix==0.21.*'
fi
# The CPU time (user + system) of the side measured, when GNU time is there: on a busy machine
# it says more than the rate, which depends on how much of its CPU the side was given.
if [ -x /usr/bin/time ]; then TIME=(/usr/bin/time -f "%U %S" -o); else TIME=(); fi
if [ "${MXB_PIN:-1}" = 1 ] && command -v taskset >/dev/null; then
    STUB_PIN=(taskset -c 0); SIDE_PIN=(taskset -c 1)
else
    STUB_PIN=(); SIDE_PIN=()
fi
port=29800
for round in $(seq 1 "$ROUNDS"); do
    for side in mxbridge mautrix-python; do
        port=$((port + 2))
        stub_port=$((port + 1))
        dir=$(mktemp -d /tmp/mxbridge-pipeline.XXXX)
        "${STUB_PIN[@]}" "$EX/bridge_bench" --mode stub --port "$stub_port" >"$dir/stub.out" 2>"$dir/stub.err" &
        stub=$!
        for _ in $(seq 100); do grep -q '^pid=' "$dir/stub.out" 2>/dev/null && break; sleep 0.05; done
        timed=(); [ ${#TIME[@]} -gt 0 ] && timed=("${TIME[@]}" "$dir/cpu")
        if [ "$side" = mxbridge ]; then
            result=$("${SIDE_PIN[@]}" "${timed[@]}" "$EX/bridge_bench" --mode pipeline --port "$port" \
                --hs-port "$stub_port" --rooms "$ROOMS" --events "$EVENTS" --producers "$PRODUCERS" --batch "$BATCH" \
                --db "${MXB_DB:-sqlite}" --dir "$dir" 2>"$dir/side.err" | tail -1)
        else
            result=$("${SIDE_PIN[@]}" "${timed[@]}" "$VENV/bin/python" "$ROOT/bench/peers/mautrix_pipeline.py" \
                --port "$port" --hs-port "$stub_port" --rooms "$ROOMS" --events "$EVENTS" 2>"$dir/side.err" | tail -1)
        fi
        stats=$(curl -s "http://127.0.0.1:$stub_port/_bench/stats")
        kill "$stub"; wait "$stub" 2>/dev/null || true
        cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$dir/cpu" 2>/dev/null || echo "?")
        echo "round=$round side=$side cpu_s=$cpu $result stub=$stats"
        rm -rf "$dir"
    done
done
