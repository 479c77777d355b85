#!/usr/bin/env bash
# Two builds of mxbridge's intake side by side (SQLite, durable inbox), interleaved round by
# round, pinned like intake.sh (load tool on CPU 0, server on CPU 1):
#   A: K=100, one transaction in flight;  B: K=1, 64 connections.
# Usage: bench/scripts/intake-ab.sh OLD_DIR NEW_DIR [ROUNDS] [SECS]
#   each directory holds release builds of bench_server and loadgen (`cargo build --release
#   -p mxbridge-bench` puts them in $CARGO_TARGET_DIR/release; build a worktree of the other
#   commit with its own CARGO_TARGET_DIR).
# Environment: LOADGEN_ARGS adds load tool flags to both scenarios (e.g. --random-ids);
#   PG_URL runs the servers on that PostgreSQL database instead of an SQLite file.
set -euo pipefail
OLD=${1:?old build dir}; NEW=${2:?new build dir}; ROUNDS=${3:-3}; SECS=${4:-4}
T=hs_token_ab_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
port=29400
for round in $(seq 1 "$ROUNDS"); do
    for which in old new; do
        if [ "$which" = old ]; then EX=$OLD; else EX=$NEW; fi
        dir=$(mktemp -d /tmp/mxbridge-ab.XXXX)
        port=$((port + 1))
        if [ -n "${PG_URL:-}" ]; then db=(--db postgres --pg-url "$PG_URL"); else db=(--db sqlite); fi
        taskset -c 1 "$EX/bench_server" --mode mxbridge "${db[@]}" --dir "$dir" --port "$port" \
            --hs-token "$T" >/dev/null 2>"$dir/err" &
        pid=$!
        sleep 0.5
        for sc in A B; do
            if [ "$sc" = A ]; then args=(-k 100 --conns 1); else args=(-k 1 --conns 64); fi
            r=$(taskset -c 0 "$NEW/loadgen" --kv --port "$port" --hs-token "$T" --secs "$SECS" \
                "${args[@]}" ${LOADGEN_ARGS:-} --pid "$pid" --label "$which" 2>&1 | tail -1)
            echo "round=$round which=$which scenario=$sc $r"
        done
        kill "$pid"; wait "$pid" 2>/dev/null || true
        # What the dispatcher handled meanwhile (the intake answers and the handler share a core).
        echo "round=$round which=$which $(grep -o 'events handled: [0-9]*' "$dir/err" | tr -d ' ' | tr ':' '=') (over A and B)"
        rm -rf "$dir"
    done
done
