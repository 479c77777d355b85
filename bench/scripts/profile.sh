#!/usr/bin/env bash
# Instruction counts of the appservice under load: bench_server under valgrind's callgrind,
# driven by loadgen on loopback. Instruction counts are stable where wall-clock figures on these
# machines are not (`callgrind_annotate OUT` shows where they go).
#
# Usage: bench/scripts/profile.sh OUT [SERVER_ARGS...] -- [LOADGEN_ARGS...]
#   e.g. bench/scripts/profile.sh /tmp/a.cg -- -k 100 --conns 1 --txns 300 --pause-ms 60 --secs 600
#        bench/scripts/profile.sh /tmp/b.cg --db postgres --pg-url 'postgres:///test?host=/var/run/postgresql&user=postgres' \
#            -- -k 1 --conns 64 --txns 10000 --secs 600
#   Paced loads (--pause-ms) keep the dispatcher up with the intake, as at full speed outside
#   valgrind. The server is stopped (SIGTERM) once the load tool is done; it prints the events its
#   handler saw. BIN_DIR (default: this checkout's release build) holds bench_server and
#   loadgen; PORT (default 29590) is the server's port.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?output file}; shift
SERVER_ARGS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do SERVER_ARGS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
command -v valgrind >/dev/null || { echo "profile.sh: valgrind is not installed" >&2; exit 1; }
if [ -z "${BIN_DIR:-}" ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${MXB_CACHE:-$HOME/.cache/mxbridge}/target-bench}
    cargo build --release --quiet -p mxbridge-bench --bin bench_server --bin loadgen
    BIN_DIR=$CARGO_TARGET_DIR/release
fi
PORT=${PORT:-29590}
TOKEN=hs_token_profile_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mxbridge-profile.XXXXXX")
valgrind --tool=callgrind --callgrind-out-file="$OUT" "$BIN_DIR/bench_server" --mode mxbridge \
    --dir "$WORK" --port "$PORT" --hs-token "$TOKEN" "${SERVER_ARGS[@]}" >"$WORK/server.out" 2>"$WORK/server.err" &
VG=$!
for _ in $(seq 1 240); do grep -q '^pid=' "$WORK/server.out" && break; sleep 0.5; done
PID=$(sed -n 's/^pid=\([0-9]*\).*/\1/p' "$WORK/server.out")
[ -n "$PID" ] || { echo "profile.sh: the server did not start" >&2; cat "$WORK/server.err" >&2; exit 1; }
"$BIN_DIR/loadgen" --port "$PORT" --hs-token "$TOKEN" "$@" || true
kill "$PID"
wait "$VG" || true
grep -h "events handled" "$WORK/server.err" || true
callgrind_annotate "$OUT" 2>/dev/null | grep "PROGRAM TOTALS" || true
rm -rf "$WORK"
