#!/usr/bin/env bash
# Brings up a local Synapse (scripts/synapse.sh: pip venv, loopback only), writes the echo
# bridge's config and registration, and runs the echo bridge on SQLite in the foreground.
# Ctrl-C stops the bridge and Synapse.
#
# With --selftest it runs the bridge in the background instead, plays a human (creates a room,
# invites a ghost, says hello), checks that the ghost echoes, and stops everything.
#
# Environment: MXB_CACHE (default ~/.cache/mxbridge), MXB_DEMO_DIR (default $MXB_CACHE/demo),
# MXB_DEMO_HS_PORT (default 18008), MXB_DEMO_AS_PORT (default 29330).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

selftest=0
[ "${1:-}" = "--selftest" ] && selftest=1

export MXB_CACHE="${MXB_CACHE:-$HOME/.cache/mxbridge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MXB_CACHE/target}"
dir="${MXB_DEMO_DIR:-$MXB_CACHE/demo}"
hs_port="${MXB_DEMO_HS_PORT:-18008}"
as_port="${MXB_DEMO_AS_PORT:-29330}"
hs="http://127.0.0.1:$hs_port"
mkdir -p "$dir"

say() { printf 'demo: %s\n' "$*" >&2; }

cat > "$dir/config.yaml" <<YAML
homeserver:
  address: $hs
  domain: localhost
appservice:
  id: echo
  address: http://127.0.0.1:$as_port
  port: $as_port
  registration: $dir/registration.yaml
  bot:
    localpart: _echo_bot
    displayname: Echo bot
  ghost_localpart_template: "_echo_{id}"
database:
  url: sqlite://$dir/echo.db
logging:
  level: info
bridge: {}
YAML

say "building the echo bridge"
cargo build --quiet --example echo
bin="$CARGO_TARGET_DIR/debug/examples/echo"
"$bin" -c "$dir/config.yaml" generate-registration >&2

bash scripts/synapse.sh stop "$dir/synapse" >/dev/null 2>&1 || true
say "starting Synapse on $hs"
bash scripts/synapse.sh start "$dir/synapse" "$hs_port" "$dir/registration.yaml" >/dev/null
bridge_pid=""
cleanup() {
    [ -n "$bridge_pid" ] && kill "$bridge_pid" 2>/dev/null && wait "$bridge_pid" 2>/dev/null
    bash "$root/scripts/synapse.sh" stop "$dir/synapse" >/dev/null 2>&1 || true
}
trap cleanup EXIT

bash scripts/synapse.sh register "$dir/synapse" "$hs_port" alice alice-password >/dev/null 2>&1 || true
token=$(curl -sf -X POST "$hs/_matrix/client/v3/login" -H 'content-type: application/json' \
    -d '{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"alice-password"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

if [ "$selftest" = 0 ]; then
    cat >&2 <<TXT

demo: Synapse runs at $hs; user alice (password alice-password) is logged in.
demo: In another shell, try:

  TOKEN=$token
  ROOM=\$(curl -s -X POST '$hs/_matrix/client/v3/createRoom' -H "Authorization: Bearer \$TOKEN" \\
      -d '{"invite":["@_echo_alice:localhost"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])')
  curl -s -X PUT "$hs/_matrix/client/v3/rooms/\$ROOM/send/m.room.message/t\$RANDOM" \\
      -H "Authorization: Bearer \$TOKEN" -d '{"msgtype":"m.text","body":"hello"}'
  sleep 1; curl -s "$hs/_matrix/client/v3/rooms/\$ROOM/messages?dir=b&limit=3" -H "Authorization: Bearer \$TOKEN"

demo: The ghost @_echo_alice:localhost joins and answers "echo: hello". Ctrl-C stops everything.

TXT
    "$bin" -c "$dir/config.yaml" run
    exit 0
fi

"$bin" -c "$dir/config.yaml" run 2>"$dir/bridge.log" &
bridge_pid=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$as_port/health/ready" >/dev/null && break
    sleep 0.1
done
auth=(-H "Authorization: Bearer $token" -H 'content-type: application/json')
room=$(curl -sf -X POST "$hs/_matrix/client/v3/createRoom" "${auth[@]}" \
    -d '{"invite":["@_echo_alice:localhost"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])')
for _ in $(seq 1 100); do
    members=$(curl -sf "$hs/_matrix/client/v3/rooms/$room/joined_members" "${auth[@]}")
    echo "$members" | grep -q '_echo_alice' && break
    sleep 0.1
done
curl -sf -X PUT "$hs/_matrix/client/v3/rooms/$room/send/m.room.message/selftest1" "${auth[@]}" \
    -d '{"msgtype":"m.text","body":"hello"}' >/dev/null
for _ in $(seq 1 100); do
    if curl -sf "$hs/_matrix/client/v3/rooms/$room/messages?dir=b&limit=5" "${auth[@]}" | grep -q '"echo: hello"'; then
        say "selftest passed: the ghost answered \"echo: hello\""
        exit 0
    fi
    sleep 0.1
done
say "selftest FAILED: no echo; bridge log follows"
tail -n 40 "$dir/bridge.log" >&2
exit 1
