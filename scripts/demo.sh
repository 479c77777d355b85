#!/usr/bin/env bash
# Brings up a local Synapse (scripts/synapse.sh: pip venv, loopback only), writes a reference
# bridge's config and registration, and runs the bridge on SQLite in the foreground, printing
# what to try. Ctrl-C stops the bridge and Synapse.
#
#   scripts/demo.sh [--selftest] [webhook|echo]      (default: webhook)
#
# With --selftest it runs the bridge in the background instead, plays a human (webhook: invites
# the bot, creates a hook, POSTs to it and sees the ghost's message; echo: invites a ghost, says
# hello, sees the echo), and stops everything.
#
# Environment: MXB_CACHE (default ~/.cache/mxbridge), MXB_DEMO_DIR (default $MXB_CACHE/demo),
# MXB_DEMO_HS_PORT (default 18008), MXB_DEMO_AS_PORT (default 29330).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

selftest=0
[ "${1:-}" = "--selftest" ] && { selftest=1; shift; }
bridge="${1:-webhook}"
case "$bridge" in webhook|echo) ;; *) echo "usage: scripts/demo.sh [--selftest] [webhook|echo]" >&2; exit 2 ;; esac

export MXB_CACHE="${MXB_CACHE:-$HOME/.cache/mxbridge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MXB_CACHE/target}"
dir="${MXB_DEMO_DIR:-$MXB_CACHE/demo-$bridge}"
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
  id: $bridge
  address: http://127.0.0.1:$as_port
  port: $as_port
  registration: $dir/registration.yaml
  bot:
    localpart: _${bridge}bot
    displayname: $bridge bridge bot
  ghost_localpart_template: "_${bridge}_{id}"
database:
  url: sqlite://$dir/$bridge.db
logging:
  level: info
bridge: {}
YAML

say "building the $bridge bridge"
cargo build --quiet --example "$bridge"
bin="$CARGO_TARGET_DIR/debug/examples/$bridge"
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

"$bin" -c "$dir/config.yaml" check-config >&2
bash scripts/synapse.sh register "$dir/synapse" "$hs_port" alice alice-password >/dev/null 2>&1 || true
token=$(curl -sf -X POST "$hs/_matrix/client/v3/login" -H 'content-type: application/json' \
    -d '{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"alice-password"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

auth_header="Authorization: Bearer $token"
if [ "$selftest" = 0 ]; then
    if [ "$bridge" = webhook ]; then
        cat >&2 <<TXT

demo: Synapse runs at $hs; user alice (password alice-password) is logged in.
demo: In another shell, make a room with the bot and ask it for a webhook:

  TOKEN=$token
  ROOM=\$(curl -s -X POST '$hs/_matrix/client/v3/createRoom' -H "Authorization: Bearer \$TOKEN" \\
      -d '{"invite":["@_webhookbot:localhost"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])')
  sleep 1; curl -s -X PUT "$hs/_matrix/client/v3/rooms/\$ROOM/send/m.room.message/t\$RANDOM" \\
      -H "Authorization: Bearer \$TOKEN" -d '{"msgtype":"m.text","body":"!webhook create demo"}'
  sleep 1; curl -s "$hs/_matrix/client/v3/rooms/\$ROOM/messages?dir=b&limit=1" -H "Authorization: Bearer \$TOKEN"

demo: The bot's answer holds the hook's URL. Then:

  curl -s -X POST HOOK_URL -H 'content-type: application/json' -d '{"text":"hello","username":"Curl"}'

demo: and "hello" appears in the room from the ghost "Curl". Ctrl-C stops everything.

TXT
    else
        cat >&2 <<TXT

demo: Synapse runs at $hs; user alice (password alice-password) is logged in. Try:

  TOKEN=$token
  ROOM=\$(curl -s -X POST '$hs/_matrix/client/v3/createRoom' -H "Authorization: Bearer \$TOKEN" \\
      -d '{"invite":["@_echo_alice:localhost"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])')
  sleep 1; curl -s -X PUT "$hs/_matrix/client/v3/rooms/\$ROOM/send/m.room.message/t\$RANDOM" \\
      -H "Authorization: Bearer \$TOKEN" -d '{"msgtype":"m.text","body":"hello"}'
  sleep 1; curl -s "$hs/_matrix/client/v3/rooms/\$ROOM/messages?dir=b&limit=3" -H "Authorization: Bearer \$TOKEN"

demo: The ghost @_echo_alice:localhost joins and answers "echo: hello". Ctrl-C stops everything.

TXT
    fi
    "$bin" -c "$dir/config.yaml" run
    exit 0
fi

"$bin" -c "$dir/config.yaml" run 2>"$dir/bridge.log" &
bridge_pid=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$as_port/health/ready" >/dev/null && break
    sleep 0.1
done
auth=(-H "$auth_header" -H 'content-type: application/json')
messages() { curl -sf "$hs/_matrix/client/v3/rooms/$room/messages?dir=b&limit=10" "${auth[@]}"; }
send() {
    curl -sf -X PUT "$hs/_matrix/client/v3/rooms/$room/send/m.room.message/$1" "${auth[@]}" \
        -d "{\"msgtype\":\"m.text\",\"body\":\"$2\"}" >/dev/null
}
fail() {
    say "selftest FAILED: $*; bridge log follows"
    tail -n 40 "$dir/bridge.log" >&2
    exit 1
}
if [ "$bridge" = echo ]; then invitee="@_echo_alice:localhost"; else invitee="@_webhookbot:localhost"; fi
room=$(curl -sf -X POST "$hs/_matrix/client/v3/createRoom" "${auth[@]}" \
    -d "{\"invite\":[\"$invitee\"]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["room_id"])')
for _ in $(seq 1 100); do
    curl -sf "$hs/_matrix/client/v3/rooms/$room/joined_members" "${auth[@]}" | grep -q "$invitee" && break
    sleep 0.1
done
if [ "$bridge" = echo ]; then
    send selftest1 hello
    for _ in $(seq 1 100); do
        messages | grep -q '"echo: hello"' && { say "selftest passed: the ghost answered \"echo: hello\""; exit 0; }
        sleep 0.1
    done
    fail "no echo"
fi
send selftest1 "!webhook create demo"
url=""
for _ in $(seq 1 100); do
    url=$(messages | grep -o "http://[^ \"]*/webhook/[A-Za-z0-9]*" | head -n1 || true)
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "$url" ] || fail "the bot gave no webhook URL"
answer=$(curl -sf -X POST "$url" -H 'content-type: application/json' -d '{"text":"hello from curl","username":"Curl"}') \
    || fail "POST to the hook failed"
echo "$answer" | grep -q event_id || fail "no event_id in $answer"
messages | grep -q '"hello from curl"' || fail "the hook's message is not in the room"
messages | grep -q '@_webhook__curl:localhost' || fail "the message is not from the ghost"
say "selftest passed: POST $url posted \"hello from curl\" as the ghost Curl"
exit 0
