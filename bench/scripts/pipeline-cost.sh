#!/usr/bin/env bash
# Instructions per event of the remote -> Matrix pipeline, both sides, counted by valgrind's
# callgrind (user space only: the kernel's share, its TCP and its thread switches, is not in
# them), which holds still on a busy machine where rates and CPU times do not. Each side runs
# the load of bench/scripts/pipeline.sh twice, with SMALL and LARGE events, against the stub
# (outside valgrind); the difference divided by LARGE - SMALL is the cost of one more event,
# startup and shutdown taken off.
# Usage: bench/scripts/pipeline-cost.sh [SMALL LARGE]   (default 1000 3000; ~5 minutes)
#   MXB_CACHE (default ~/.cache/mxbridge): the mautrix venv (pipeline.sh installs it) and the
#   build (target-bench, or $CARGO_TARGET_DIR); MXB_BENCH_BIN: a bridge_bench to use instead
#   MXB_SIDES (default "mxbridge mautrix-python"): the sides to count
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SMALL=${1:-1000}; LARGE=${2:-3000}
CACHE=${MXB_CACHE:-$HOME/.cache/mxbridge}
if [ -n "${MXB_BENCH_BIN:-}" ]; then
    EX=$(cd "$(dirname "$MXB_BENCH_BIN")" && pwd)
else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target-bench}
    cargo build --release -q -p mxbridge-bench --bin bridge_bench
    EX=$CARGO_TARGET_DIR/release
fi
VENV=$CACHE/peers/mautrix-venv
[ -x "$VENV/bin/python" ] || { echo "no mautrix venv at $VENV: run bench/scripts/pipeline.sh once" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
port=29900
# count SIDE EVENTS: the program's instructions (all its threads) for EVENTS events.
count() {
    local side=$1 events=$2 dir stub
    port=$((port + 2))
    dir=$(mktemp -d /tmp/mxbridge-pipeline-cost.XXXX)
    "$EX/bridge_bench" --mode stub --port $((port + 1)) >"$dir/stub.out" 2>"$dir/stub.err" &
    stub=$!
    for _ in $(seq 100); do grep -q '^pid=' "$dir/stub.out" 2>/dev/null && break; sleep 0.05; done
    local vg=(valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out")
    if [ "$side" = mxbridge ]; then
        "${vg[@]}" "$EX/bridge_bench" --mode pipeline --port "$port" --hs-port $((port + 1)) \
            --rooms 50 --events "$events" --producers 50 --db sqlite --dir "$dir" \
            >"$dir/side.out" 2>"$dir/side.err"
    else
        "${vg[@]}" "$VENV/bin/python" "$ROOT/bench/peers/mautrix_pipeline.py" --port "$port" \
            --hs-port $((port + 1)) --rooms 50 --events "$events" >"$dir/side.out" 2>"$dir/side.err"
    fi
    local sends
    sends=$(curl -s "http://127.0.0.1:$((port + 1))/_bench/stats")
    kill "$stub"; wait "$stub" 2>/dev/null || true
    echo "# $side events=$events stub=$sends" >&2
    # All threads together (callgrind's default): the file's "summary:" line.
    awk '/^summary:/ { n += $2 } END { print n }' "$dir"/cg.out*
    rm -rf "$dir"
}
for side in ${MXB_SIDES:-mxbridge mautrix-python}; do
    small=$(count "$side" "$SMALL")
    large=$(count "$side" "$LARGE")
    awk -v s="$side" -v a="$small" -v b="$large" -v n=$((LARGE - SMALL)) 'BEGIN {
        printf "side=%s instructions_small=%d instructions_large=%d per_event=%.0f\n", s, a, b, (b - a) / n }'
done
