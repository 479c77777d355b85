#!/usr/bin/env bash
# Brings up a local Synapse (scripts/synapse.sh: pip venv, loopback only), writes a reference
# bridge's config and registration, and runs the bridge on SQLite in the foreground, printing
# what to try. Ctrl-C stops the bridge and Synapse.
#
#   scripts/demo.sh [--selftest] [webhook|echo|irc]      (default: webhook)
#
# With --selftest it runs the bridge in the background instead, plays a human (webhook: invites
# the bot, creates a hook, POSTs to it and sees the ghost's message; echo: invites a ghost, says
# hello, sees the echo; irc: a Matrix user logs in, joins a channel and talks with an IRC user on
# a raw socket, both ways), and stops everything. `irc` also starts a private InspIRCd
# (scripts/inspircd.sh).
#
# Environment: MXB_CACHE (default ~/.cache/mxbridge), MXB_DEMO_DIR (default $MXB_CACHE/demo),
# MXB_DEMO_HS_PORT (default 18008), MXB_DEMO_AS_PORT (default 29330), MXB_DEMO_IRC_PORT
# (default 16667), MXB_BUILD_FLAGS (extra cargo flags for the bridge's build; CI passes its
# tests' flags so the demo reuses their build).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

selftest=0
[ "${1:-}" = "--selftest" ] && { selftest=1; shift; }
bridge="${1:-webhook}"
case "$bridge" in webhook|echo|irc) ;; *) echo "usage: scripts/demo.sh [--selftest] [webhook|echo|irc]" >&2; exit 2 ;; esac

export MXB_CACHE="${MXB_CACHE:-$HOME/.cache/mxbridge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MXB_CACHE/target}"
dir="${MXB_DEMO_DIR:-$MXB_CACHE/demo-$bridge}"
hs_port="${MXB_DEMO_HS_PORT:-18008}"
as_port="${MXB_DEMO_AS_PORT:-29330}"
irc_port="${MXB_DEMO_IRC_PORT:-16667}"
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
YAML
if [ "$bridge" = irc ]; then
    cat >> "$dir/config.yaml" <<YAML
permissions:
  "localhost": user
relay:
  enabled: true
  admin_only: false
  message_formats:
    m.text: "<{sender_name}> {body}"
bridge:
  server: 127.0.0.1:$irc_port
YAML
    say "building the IRC bridge"
    # shellcheck disable=SC2086 # MXB_BUILD_FLAGS holds several flags.
    cargo build --quiet -p mxbridge-irc ${MXB_BUILD_FLAGS:+-p mxbridge $MXB_BUILD_FLAGS}
    bin="$CARGO_TARGET_DIR/debug/mxbridge-irc"
else
    echo "bridge: {}" >> "$dir/config.yaml"
    say "building the $bridge bridge"
    # shellcheck disable=SC2086
    cargo build --quiet --example "$bridge" ${MXB_BUILD_FLAGS:-}
    bin="$CARGO_TARGET_DIR/debug/examples/$bridge"
fi
"$bin" -c "$dir/config.yaml" generate-registration >&2

bash scripts/synapse.sh stop "$dir/synapse" >/dev/null 2>&1 || true
if [ "$selftest" = 1 ]; then
    # A self-test starts from nothing: no homeserver data, logins or portals of an earlier run.
    [ "$bridge" = irc ] && { bash scripts/inspircd.sh stop "$dir/ircd" >/dev/null 2>&1 || true; }
    rm -rf "$dir/synapse" "$dir/ircd" "$dir/$bridge.db" "$dir/$bridge.db-wal" "$dir/$bridge.db-shm"
fi
say "starting Synapse on $hs"
bash scripts/synapse.sh start "$dir/synapse" "$hs_port" "$dir/registration.yaml" >/dev/null
bridge_pid=""
cleanup() {
    [ -n "$bridge_pid" ] && kill "$bridge_pid" 2>/dev/null && wait "$bridge_pid" 2>/dev/null
    bash "$root/scripts/synapse.sh" stop "$dir/synapse" >/dev/null 2>&1 || true
    [ "$bridge" = irc ] && bash "$root/scripts/inspircd.sh" stop "$dir/ircd" >/dev/null 2>&1
    true
}
trap cleanup EXIT
if [ "$bridge" = irc ]; then
    bash scripts/inspircd.sh stop "$dir/ircd" >/dev/null 2>&1 || true
    say "starting InspIRCd on 127.0.0.1:$irc_port"
    bash scripts/inspircd.sh start "$dir/ircd" "$irc_port"
fi

"$bin" -c "$dir/config.yaml" check-config >&2
bash scripts/synapse.sh register "$dir/synapse" "$hs_port" alice alice-password >/dev/null 2>&1 || true
token=$(curl -sf -X POST "$hs/_matrix/client/v3/login" -H 'content-type: application/json' \
    -d '{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"alice-password"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

auth_header="Authorization: Bearer $token"
if [ "$selftest" = 0 ]; then
    if [ "$bridge" = irc ]; then
        cat >&2 <<TXT

demo: Synapse runs at $hs (user alice, password alice-password); InspIRCd at 127.0.0.1:$irc_port.
demo: In a Matrix client logged in as alice (or with curl and TOKEN=$token), start a DM with
demo: @_ircbot:localhost and say, one message each:

  login nick
  alice
  join #demo

demo: The bot invites you to the room of #demo. Connect any IRC client to 127.0.0.1:$irc_port,
demo: /join #demo and talk: both sides see each other (formatting, /me, topics, nick changes,
demo: kicks). /msg alice opens a private room. In #demo's room, \`!irc set-relay\` relays users
demo: without a login. Ctrl-C stops everything.

TXT
    elif [ "$bridge" = webhook ]; then
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
if [ "$bridge" = irc ]; then
    # Both humans: Alice on Matrix, Dave on a raw IRC socket.
    if python3 - "$hs" "$token" "$irc_port" <<'PY'
import json, socket, sys, time, urllib.parse, urllib.request

hs, token, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def call(method, path, body=None):
    req = urllib.request.Request(hs + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
def until(what, check, secs=30):
    end = time.time() + secs
    while time.time() < end:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    sys.exit(f"selftest: never saw {what}")
def bodies(room):
    chunk = call("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/messages?dir=b&limit=50")["chunk"]
    return [e for e in chunk if e.get("type") == "m.room.message"]
n = [0]
def say(room, text):
    n[0] += 1
    call("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/st{time.time()}{n[0]}", {"msgtype": "m.text", "body": text})

irc = socket.create_connection(("127.0.0.1", port))
irc.settimeout(0.2)
buf = [b""]
def irc_lines():
    try:
        while True:
            data = irc.recv(65536)
            if not data:
                break
            buf[0] += data
    except OSError:
        pass
    lines = buf[0].decode(errors="replace").split("\r\n")
    for l in lines:
        if l.startswith("PING "):
            irc.sendall(("PONG " + l[5:] + "\r\n").encode())
    return lines
irc.sendall(b"NICK dave\r\nUSER dave 0 * :Dave\r\n")
until("dave's registration", lambda: any(" 001 " in l for l in irc_lines()))
irc.sendall(b"JOIN #demo\r\n")

dm = call("POST", "/_matrix/client/v3/createRoom", {"is_direct": True, "preset": "private_chat", "invite": ["@_ircbot:localhost"]})["room_id"]
until("the bot in the DM", lambda: "@_ircbot:localhost" in call("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(dm)}/joined_members")["joined"])
for text, expect in (("login nick", "Nick"), ("alice", "Logged in"), ("join #demo", "Joining")):
    say(dm, text)
    until(f"the bot's answer {expect!r}", lambda: any(expect in e["content"].get("body", "") for e in bodies(dm)))
def invited():
    # The invite to the channel's room, by its name: the login's space invites Alice too.
    filt = urllib.parse.quote(json.dumps({"room": {"timeline": {"limit": int(time.time() * 10) % 1000 + 1}}}))
    rooms = call("GET", f"/_matrix/client/v3/sync?timeout=0&filter={filt}").get("rooms", {}).get("invite", {})
    def named(invite):
        events = invite.get("invite_state", {}).get("events", [])
        return any(e.get("type") == "m.room.name" and e.get("content", {}).get("name") == "#demo"
                   for e in events)
    return next((r for r, invite in rooms.items() if named(invite)), None)
room = until("the invite to #demo", invited)
call("POST", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/join", {})
until("alice on IRC", lambda: any(l.startswith(":alice!") and "JOIN" in l for l in irc_lines()))
irc.sendall(b"PRIVMSG #demo :hello from \x02IRC\x02\r\n")
until("dave's line in Matrix", lambda: any(e["content"].get("body") == "hello from IRC" for e in bodies(room)))
say(room, "hello from Matrix")
until("alice's line on IRC", lambda: any(l.startswith(":alice!") and l.endswith("PRIVMSG #demo :hello from Matrix") for l in irc_lines()))
print("selftest passed: dave (IRC) and alice (Matrix) talked in #demo both ways")
PY
    then
        say "selftest passed"
        exit 0
    fi
    fail "the IRC selftest failed"
fi
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
