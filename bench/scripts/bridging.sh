#!/usr/bin/env bash
# Bridging benchmark, side by side: every incoming m.room.message makes one ghost send to a stub
# homeserver on loopback (bridge_bench --mode stub), which checks the order per room.
#   mxbridge-sqlite / mxbridge-postgres: bridge_bench --mode mxbridge (AppService,
#     durable inbox, `ctx.intent(ghost)?.send_text(..)`, the ghost cached as registered+joined)
#   mautrix-python: bench/peers/mautrix_bridge.py (AppService + IntentAPI.send_text, state store
#     pre-filled the same way)
# loadgen pushes a fixed number of Synapse-shaped transactions (one in flight, K=100,
# 50 rooms, 9 in 10 events are messages). Bridged/s = sends the stub received / (last send - first
# send). Rounds are interleaved, each server started fresh with a fresh stub.
#
# The programs are the binaries of bench/ (bench/src/bin/), built here with
# `cargo build --release -p mxbridge-bench`.
#
# Usage: bench/scripts/bridging.sh [--rounds N] [--txns T] [--ab OLD_DIR NEW_DIR]
#   --ab: two builds of mxbridge instead of the peers (rows old-sqlite, new-sqlite, old-pg-socket,
#     new-pg-socket), each directory holding release builds of loadgen and bridge_bench (the
#     load tool of NEW_DIR drives all)
#   MXB_CACHE (default ~/.cache/mxbridge): the mautrix venv (bench/scripts/intake.sh --install-only)
#   MXBRIDGE_BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432/test); unreachable = skipped
#   MXBRIDGE_BENCH_POSTGRES_SOCKET (default postgres:///test?host=/var/run/postgresql&user=postgres):
#     the same server over its Unix socket (row mxbridge-postgres-socket); unreachable = skipped
#   MXB_PIN=0 turns off CPU pinning (default: load tool and stub on CPU 0, server on CPU 1)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${MXB_CACHE:-$HOME/.cache/mxbridge}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target-bench}
source "$ROOT/bench/scripts/common.sh"
ROUNDS=2
TXNS=100
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --txns) TXNS=$2; shift 2 ;;
        --ab) AB_OLD=$2; AB_NEW=$3; shift 3 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
HS_TOKEN=hs_token_bench_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
VENV=$CACHE/peers/mautrix-venv
if [ -n "${AB_OLD:-}" ]; then
    EX=$AB_NEW
    SERVERS=(old-sqlite new-sqlite old-pg-socket new-pg-socket)
else
    if ! "$VENV/bin/python" -c 'import importlib.metadata as m; assert m.version("mautrix").startswith("0.21.")' 2>/dev/null; then
        "$ROOT/bench/scripts/intake.sh" --install-only
    fi

    (cd "$ROOT" && cargo build --release --quiet -p mxbridge-bench --bin loadgen --bin bridge_bench)
    EX=$CARGO_TARGET_DIR/release

    SERVERS=(mxbridge-sqlite mautrix-python)
    add_postgres_servers
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mxbridge-bridging.XXXXXX")
RESULTS=$WORK/results.kv
SERVER_PID=
STUB_PID=
stop_pid() {
    if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
        kill "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
cleanup() {
    stop_pid "$SERVER_PID"
    stop_pid "$STUB_PID"
}
trap cleanup EXIT

# wait_listening LOGFILE: until the process printed its `pid=` line (at most 30 s).
wait_listening() {
    for _ in $(seq 300); do
        grep -q '^pid=' "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

stats() {
    python3 - "$1" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/_bench/stats", timeout=5) as r:
    s = json.load(r)
secs = (s["last_ns"] - s["first_ns"]) / 1e9
rate = s["sends"] / secs if secs > 0 else 0
print(f"sends={s['sends']} order_violations={s['order_violations']} other_requests={s['other_requests']} "
      f"unparsed={s['unparsed']} rooms={s['rooms']} send_secs={secs:.3f} bridged_s={rate:.0f}")
EOF
}

echo "rounds=$ROUNDS txns=$TXNS (K=100, one in flight) pinning=${LOAD_PIN[*]:-none}/${SERVER_PIN[*]:-none} work=$WORK"
port=29700
for round in $(seq 1 "$ROUNDS"); do
    n=${#SERVERS[@]}
    for i in $(seq 0 $((n - 1))); do
        name=${SERVERS[$(((i + round - 1) % n))]}
        stub_port=$((port + 1))
        port=$((port + 2))
        log=$WORK/$name.$port
        "${LOAD_PIN[@]}" "$EX/bridge_bench" --mode stub --port "$stub_port" >"$log.stub.out" 2>"$log.stub.err" &
        STUB_PID=$!
        case $name in
            mxbridge-sqlite)
                "${SERVER_PIN[@]}" "$EX/bridge_bench" --mode mxbridge --db sqlite --dir "$WORK" \
                    --port "$port" --hs-port "$stub_port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
            mxbridge-postgres)
                "${SERVER_PIN[@]}" "$EX/bridge_bench" --mode mxbridge --db postgres --pg-url "$PG_URL" \
                    --port "$port" --hs-port "$stub_port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
            mxbridge-postgres-tls)
                "${SERVER_PIN[@]}" "$EX/bridge_bench" --mode mxbridge --db postgres --pg-url "$PG_TLS_URL" \
                    --port "$port" --hs-port "$stub_port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
            old-sqlite|new-sqlite)
                if [ "$name" = old-sqlite ]; then bin=$AB_OLD; else bin=$AB_NEW; fi
                "${SERVER_PIN[@]}" "$bin/bridge_bench" --mode mxbridge --db sqlite --dir "$WORK" \
                    --port "$port" --hs-port "$stub_port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
            old-pg-socket|new-pg-socket)
                if [ "$name" = old-pg-socket ]; then bin=$AB_OLD; else bin=$AB_NEW; fi
                "${SERVER_PIN[@]}" "$bin/bridge_bench" --mode mxbridge --db postgres --pg-url "$PG_SOCKET_URL" \
                    --port "$port" --hs-port "$stub_port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
            mxbridge-postgres-socket)
                "${SERVER_PIN[@]}" "$EX/bridge_bench" --mode mxbridge --db postgres --pg-url "$PG_SOCKET_URL" \
                    --port "$port" --hs-port "$stub_port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
            mautrix-python)
                "${SERVER_PIN[@]}" "$VENV/bin/python" "$ROOT/bench/peers/mautrix_bridge.py" \
                    --port "$port" --hs-port "$stub_port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
        esac
        SERVER_PID=$!
        if ! wait_listening "$log.out" || ! wait_listening "$log.stub.out"; then
            echo "round $round: $name did not start; its log:" >&2
            tail -5 "$log.err" >&2 || true
            cleanup
            continue
        fi
        load=$("${LOAD_PIN[@]}" "$EX/loadgen" --kv --hs-token "$HS_TOKEN" --port "$port" \
            --pid "$SERVER_PID" -k 100 --conns 1 --txns "$TXNS" --secs 60 --label "$name")
        accepted=$(grep -o ' txns=[0-9]*' <<<"$load" | grep -o '[0-9]*')
        # Every 10th event (n % 10 == 9) is a member event; the rest are messages to bridge.
        expected=$((accepted * 90))
        # Wait until the stub got every send, or nothing arrived for 3 s (60 s at most).
        last=-1 still=0
        for _ in $(seq 600); do
            got=$(stats "$stub_port" | grep -o '^sends=[0-9]*' | grep -o '[0-9]*')
            [ "$got" -ge "$expected" ] && break
            if [ "$got" = "$last" ]; then still=$((still + 1)); else still=0; fi
            [ "$still" -ge 30 ] && break
            last=$got
            sleep 0.1
        done
        out=$(stats "$stub_port")
        rss=$(grep -o 'rss_peak_mib=[0-9.-]*' <<<"$load")
        echo "round=$round label=$name expected=$expected $out $rss" >>"$RESULTS"
        echo "round $round: $name: expected=$expected $out $rss"
        stop_pid "$SERVER_PID"
        SERVER_PID=
        stop_pid "$STUB_PID"
        STUB_PID=
    done
done

python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [dict(kv.split("=", 1) for kv in line.split()) for line in open(sys.argv[1])]
labels = []
for r in rows:
    if r["label"] not in labels:
        labels.append(r["label"])
def med(label, key):
    vals = [float(r[key]) for r in rows if r["label"] == label and r.get(key, "-") != "-"]
    return statistics.median(vals) if vals else None
print()
print("| server | events bridged/s (median) | rounds | sends / expected | order violations | other HS requests | peak RSS MiB |")
print("|---|---|---|---|---|---|---|")
for l in labels:
    rs = [r for r in rows if r["label"] == l]
    sends = sum(int(r["sends"]) for r in rs)
    exp = sum(int(r["expected"]) for r in rs)
    viol = sum(int(r["order_violations"]) for r in rs)
    other = sum(int(r["other_requests"]) for r in rs)
    rate = med(l, "bridged_s")
    peak = med(l, "rss_peak_mib")
    per_round = ", ".join(format(float(r["bridged_s"]), ",.0f") for r in rs)
    print(f"| {l} | {rate:,.0f} | {per_round} | {sends} / {exp} | {viol} | {other} | {'-' if peak is None else f'{peak:.1f}'} |")
total_viol = sum(int(r["order_violations"]) for r in rows)
print()
print(f"order violations: {total_viol}")
base = med("mautrix-python", "bridged_s")
for l in labels:
    if l.startswith("mxbridge") and base:
        ratio = med(l, "bridged_s") / base
        print(f"{l} / mautrix-python: {ratio:.2f}x (target >= 5x: {'met' if ratio >= 5 else 'MISSED'})")
EOF
echo
echo "raw results: $RESULTS"
