#!/usr/bin/env bash
# Intake benchmark, side by side: mxbridge (durable inbox, SQLite and PostgreSQL), a bare axum
# handler, mautrix-python 0.21 and matrix-appservice 3.0 (Node), each counting events and nothing
# else, driven by loadgen (bench/src/bin/loadgen.rs) over loopback. Interleaved: every round runs
# every server once (in a rotated order), each freshly started, through
#   A: Synapse-shaped (one transaction in flight), K=100 events per transaction
#   B: 64 connections, K=1
# and records startup-to-first-200, idle RSS and peak RSS. Prints medians and the ratios against
# the targets in BENCHMARKS.md.
#
# Usage: bench/scripts/intake.sh [--rounds N] [--secs S] [--servers 'NAME ...'] [--only-a] [--install-only]
#   --servers runs only the named servers (e.g. 'mxbridge-sqlite mautrix-python'); --only-a skips B.
#   MXB_CACHE (default ~/.cache/mxbridge): venv, node_modules, the build (target-bench)
#   MXBRIDGE_BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432/test); unreachable = skipped
#   MXBRIDGE_BENCH_POSTGRES_SOCKET (default postgres:///test?host=/var/run/postgresql&user=postgres):
#     the same server over its Unix socket (row mxbridge-postgres-socket); unreachable = skipped.
#     Loopback TCP without an sslmode connects without TLS (docs/deploy.md); the row
#     mxbridge-postgres-tls adds sslmode=prefer to the same URL, as a URL to another host would
#     negotiate it.
#   MXB_PIN=0 turns off CPU pinning (default: load tool on CPU 0, server on CPU 1)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${MXB_CACHE:-$HOME/.cache/mxbridge}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target-bench}
source "$ROOT/bench/scripts/common.sh"
ROUNDS=3
SECS=5
INSTALL_ONLY=0
ONLY_SERVERS=
ONLY_A=0
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --install-only) INSTALL_ONLY=1; shift ;;
        --servers) ONLY_SERVERS=$2; shift 2 ;;
        --only-a) ONLY_A=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
HS_TOKEN=hs_token_bench_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
PEERS=$CACHE/peers
mkdir -p "$PEERS"

# --- peers, from their registries -------------------------------------------------------------
VENV=$PEERS/mautrix-venv
if ! "$VENV/bin/python" -c 'import importlib.metadata as m; assert m.version("mautrix").startswith("0.21.")' 2>/dev/null; then
    echo "installing mautrix-python 0.21 into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'mautrix==0.21.*'
fi
NODE_DIR=$PEERS/node
if ! grep -q '"version": "3\.0\.' "$NODE_DIR/node_modules/matrix-appservice/package.json" 2>/dev/null; then
    echo "installing matrix-appservice 3.0 into $NODE_DIR"
    mkdir -p "$NODE_DIR"
    [ -f "$NODE_DIR/package.json" ] || (cd "$NODE_DIR" && npm init -y >/dev/null)
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error 'matrix-appservice@3.0')
fi
echo "mautrix $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mautrix"))')," \
    "matrix-appservice $(node -p "require('$NODE_DIR/node_modules/matrix-appservice/package.json').version")," \
    "node $(node --version), $("$VENV/bin/python" --version)"
[ "$INSTALL_ONLY" = 1 ] && exit 0

# --- our side ------------------------------------------------------------------------------------
(cd "$ROOT" && cargo build --release --quiet -p mxbridge-bench --bin loadgen --bin bench_server)
EX=$CARGO_TARGET_DIR/release

# diag-sqlite-intake-only is mxbridge on SQLite with a handler that never returns: the dispatcher
# stops at its in-flight limit, so it shows what the intake costs without the dispatcher's writes.
# diag-sqlite-random-ids is mxbridge on SQLite driven with event IDs in no order (`loadgen
# --random-ids`), as real ones are: what the dedup index costs in production (BENCHMARKS.md).
SERVERS=(mxbridge-sqlite bare-axum mautrix-python matrix-appservice diag-sqlite-intake-only
    diag-sqlite-random-ids)
add_postgres_servers
if [ -n "$ONLY_SERVERS" ]; then
    read -r -a SERVERS <<<"$ONLY_SERVERS"
fi
SCENARIOS=("A -k 100 --conns 1 --warmup 50" "B -k 1 --conns 64 --warmup 2000")
[ "$ONLY_A" = 1 ] && SCENARIOS=("${SCENARIOS[0]}")


WORK=$(mktemp -d "${TMPDIR:-/tmp}/mxbridge-bench.XXXXXX")
RESULTS=$WORK/results.kv
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# start_server NAME PORT: starts it in the background, sets SERVER_PID and T0 (ns).
start_server() {
    local name=$1 port=$2 log=$WORK/$1.$2
    T0=$(date +%s%N)
    case $name in
        mxbridge-sqlite|diag-sqlite-random-ids)
            "${SERVER_PIN[@]}" "$EX/bench_server" --mode mxbridge --db sqlite --dir "$WORK" \
                --port "$port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
        diag-sqlite-intake-only)
            "${SERVER_PIN[@]}" "$EX/bench_server" --mode mxbridge --db sqlite --dir "$WORK" \
                --stall-handler --port "$port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
        mxbridge-postgres)
            "${SERVER_PIN[@]}" "$EX/bench_server" --mode mxbridge --db postgres --pg-url "$PG_URL" \
                --port "$port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
        mxbridge-postgres-tls)
            "${SERVER_PIN[@]}" "$EX/bench_server" --mode mxbridge --db postgres --pg-url "$PG_TLS_URL" \
                --port "$port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
        mxbridge-postgres-socket)
            "${SERVER_PIN[@]}" "$EX/bench_server" --mode mxbridge --db postgres \
                --pg-url "$PG_SOCKET_URL" \
                --port "$port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
        bare-axum)
            "${SERVER_PIN[@]}" "$EX/bench_server" --mode bare \
                --port "$port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
        mautrix-python)
            "${SERVER_PIN[@]}" "$VENV/bin/python" "$ROOT/bench/peers/mautrix_counter.py" \
                --port "$port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
        matrix-appservice)
            NODE_PATH=$NODE_DIR/node_modules "${SERVER_PIN[@]}" node \
                "$ROOT/bench/peers/matrix_appservice_counter.js" \
                --port "$port" --hs-token "$HS_TOKEN" >"$log.out" 2>"$log.err" & ;;
    esac
    SERVER_PID=$!
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

load() {
    "${LOAD_PIN[@]}" "$EX/loadgen" --kv --hs-token "$HS_TOKEN" --secs "$SECS" "$@"
}

echo "rounds=$ROUNDS secs=$SECS pinning=${LOAD_PIN[*]:-none}/${SERVER_PIN[*]:-none} work=$WORK"
port=29500
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order so that no server always runs first or last.
    n=${#SERVERS[@]}
    for i in $(seq 0 $((n - 1))); do
        name=${SERVERS[$(((i + round - 1) % n))]}
        port=$((port + 1))
        start_server "$name" "$port"
        if ! out=$(load --port "$port" --pid "$SERVER_PID" --startup-from-ns "$T0" --startup-only \
            --label "$name"); then
            echo "round $round: $name did not start; its log:" >&2
            tail -5 "$WORK/$name.$port.err" >&2 || true
            stop_server
            continue
        fi
        echo "round=$round $out" >>"$RESULTS"
        for scenario in "${SCENARIOS[@]}"; do
            read -r s flags <<<"$scenario"
            read -r -a flags <<<"$flags"
            [ "$name" = diag-sqlite-random-ids ] && flags+=(--random-ids)
            out=$(load --port "$port" --pid "$SERVER_PID" --label "$name" "${flags[@]}")
            echo "round=$round scenario=$s $out" >>"$RESULTS"
        done
        stop_server
        handled=$(grep -o 'events handled: [0-9]*' "$WORK/$name.$port.err" | grep -o '[0-9]*$' || echo '?')
        echo "round $round: $name done (handler saw $handled events)"
    done
done

# --- medians, table, ratios -------------------------------------------------------------------
python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = []
for line in open(sys.argv[1]):
    rows.append(dict(kv.split("=", 1) for kv in line.split()))

def med(label, key, scenario=None):
    vals = [float(r[key]) for r in rows
            if r.get("label") == label and r.get("scenario") == scenario and r.get(key, "-") != "-"]
    return statistics.median(vals) if vals else None

labels = []
for r in rows:
    if r["label"] not in labels:
        labels.append(r["label"])

def f(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)

print()
print("| server | A: K=100, 1 in flight: events/s | A p50 / p99 ms | B: K=1, 64 conns: txn/s | B p50 / p99 ms | startup to first 200 ms | idle RSS MiB | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
for l in labels:
    peak = max([v for v in (med(l, "rss_peak_mib", "A"), med(l, "rss_peak_mib", "B")) if v is not None], default=None)
    idle = med(l, "idle_rss_kib")
    print(f"| {l} | {f(med(l, 'events_s', 'A'))} | {f(med(l, 'p50_ms', 'A'), '{:.2f}')} / {f(med(l, 'p99_ms', 'A'), '{:.2f}')} "
          f"| {f(med(l, 'txn_s', 'B'))} | {f(med(l, 'p50_ms', 'B'), '{:.2f}')} / {f(med(l, 'p99_ms', 'B'), '{:.2f}')} "
          f"| {f(med(l, 'startup_ms'), '{:.0f}')} | {f(None if idle is None else idle / 1024, '{:.1f}')} | {f(peak, '{:.1f}')} |")
print()
print(f"medians of {max(int(r['round']) for r in rows)} interleaved rounds")
print()

def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b

print("| target | server | ratio | goal | met |")
print("|---|---|---|---|---|")
for mx in [l for l in labels if l.startswith("mxbridge")]:
    a = med(mx, "events_s", "A")
    b = med(mx, "txn_s", "B")
    checks = [
        ("A vs mautrix-python", ratio(a, med("mautrix-python", "events_s", "A")), 10.0, True),
        ("A vs matrix-appservice", ratio(a, med("matrix-appservice", "events_s", "A")), 1.5, True),
        ("A vs bare axum", ratio(a, med("bare-axum", "events_s", "A")), 0.5, True),
        ("B vs mautrix-python", ratio(b, med("mautrix-python", "txn_s", "B")), 2.0, True),
        # The target is 15 MB (10^6 bytes), i.e. 14.3 MiB.
        ("idle RSS MB", None if med(mx, "idle_rss_kib") is None else med(mx, "idle_rss_kib") * 1024 / 1e6, 15.0, False),
        ("startup ms", med(mx, "startup_ms"), 100.0, False),
    ]
    for name, v, goal, higher in checks:
        met = "-" if v is None else ("yes" if (v >= goal if higher else v <= goal) else "NO")
        shown = "-" if v is None else (f"{v:.2f}x" if higher else f"{v:.1f}")
        print(f"| {name} | {mx} | {shown} | {'>=' if higher else '<='} {goal:g}{'x' if higher else ''} | {met} |")

# The rounds' own ratios: a median ratio near a goal says little when the rounds spread.
for mx in [l for l in labels if l.startswith("mxbridge")]:
    per_round = []
    for rnd in sorted({r["round"] for r in rows}, key=int):
        def at(label, rnd=rnd):
            return next((float(r["events_s"]) for r in rows if r.get("label") == label
                         and r.get("scenario") == "A" and r["round"] == rnd), None)
        v = ratio(at(mx), at("mautrix-python"))
        per_round.append("-" if v is None else f"{v:.2f}x")
    print(f"A vs mautrix-python per round, {mx}: {', '.join(per_round)}")
EOF
echo
echo "raw results: $RESULTS"
