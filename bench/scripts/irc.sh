#!/usr/bin/env bash
# The IRC bridge beside heisenbridge (PyPI, pinned), in one run, against the same Synapse and
# the same InspIRCd (irc/inspircd/test.conf: per-IP connection and channel limits raised, no
# server-side fake lag). Each bridge carries one Matrix user into its own channel; an IRC user
# on a raw socket talks with them (bench/peers/irc_bench.py): messages per second each way at
# steady state (order checked), then the latency of single messages each way, then the
# bridge's resident memory. Both bridges get the same flood throttle: heisenbridge's fixed one
# (seven short lines at once, then one per 1.5 s; a line longer than 128 bytes waits longer),
# which the IRC bridge is configured to match (throttle_burst 7, throttle_interval_ms 1500).
#
# Then, at scale: each bridge gets MXB_IRC_USERS more Matrix users, each logged in with a nick
# of its own (heisenbridge: a network room per user, its own commands NICK, CONNECT, JOIN), each
# joining MXB_IRC_CHANNELS channels of its own; once every channel has its user on IRC and every
# portal room has invited its user, each bridge's resident memory (VmRSS, and the peak VmHWM)
# is read from /proc.
#
#   bench/scripts/irc.sh            (results: bench/results/irc-DATE-COMMIT.txt)
#
# Environment: MXB_IRC_N (IRC -> Matrix lines, default 200: InspIRCd writes a client the first 33
# KB or so of a burst at once and the rest a second later, which a burst of 300 tagged lines
# passes for both bridges), MXB_IRC_M2I_N (Matrix -> IRC messages, default 20), MXB_IRC_SAMPLES
# (latency probes each way, default 20), MXB_IRC_USERS (logins at scale, default 100; 0 skips the
# scale part), MXB_IRC_CHANNELS (channels per login, default 5), MXB_IRC_LOG (the bridge's log
# filter, default warn; its log is in ~/.cache/mxbridge/bench-irc/mxbridge.log), MXB_IRC_BIN (a
# bridge binary to use instead of building one).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
export MXB_CACHE="${MXB_CACHE:-$HOME/.cache/mxbridge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MXB_CACHE/target}"
n_i2m="${MXB_IRC_N:-200}"
n_m2i="${MXB_IRC_M2I_N:-20}"
samples="${MXB_IRC_SAMPLES:-20}"
users="${MXB_IRC_USERS:-100}"
per_user="${MXB_IRC_CHANNELS:-5}"
dir="$MXB_CACHE/bench-irc"
hs_port=18208 our_port=29530 hb_port=29531 irc_port=16868
hs="http://127.0.0.1:$hs_port"
venv="$MXB_CACHE/peers/heisenbridge-venv"
out="bench/results/irc-$(date -u +%F)-$(git rev-parse --short HEAD).txt"

say() { printf 'irc bench: %s\n' "$*" >&2; }

if [ -n "${MXB_IRC_BIN:-}" ]; then
    bin="$MXB_IRC_BIN"
else
    say "building the IRC bridge (release, thin LTO)"
    cargo build --quiet --release -p mxbridge-irc --config 'profile.release.lto="thin"' \
        --config profile.release.codegen-units=16
    bin="$CARGO_TARGET_DIR/release/mxbridge-irc"
fi
if [ ! -x "$venv/bin/heisenbridge" ]; then
    say "installing heisenbridge 1.15.4"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q heisenbridge==1.15.4
fi

rm -rf "$dir"
mkdir -p "$dir"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    bash "$root/scripts/synapse.sh" stop "$dir/synapse" >/dev/null 2>&1 || true
    bash "$root/scripts/inspircd.sh" stop "$dir/ircd" >/dev/null 2>&1 || true
}
trap cleanup EXIT

cat > "$dir/config.yaml" <<YAML
homeserver: {address: '$hs', domain: localhost}
appservice:
  id: ircbench
  address: 'http://127.0.0.1:$our_port'
  port: $our_port
  registration: '$dir/registration.yaml'
  bot: {localpart: _ircbench_bot}
  ghost_localpart_template: '_ircbench_{id}'
database: {url: 'sqlite://$dir/irc.db'}
permissions: {'localhost': user}
logging: {level: '${MXB_IRC_LOG:-warn}'}
bridge: {server: '127.0.0.1:$irc_port', throttle_burst: 7, throttle_interval_ms: 1500, max_lines: 10}
YAML
"$bin" -c "$dir/config.yaml" generate-registration >/dev/null
"$venv/bin/heisenbridge" -c "$dir/heisenbridge.yaml" --generate -l 127.0.0.1 -p "$hb_port" >/dev/null

bash scripts/inspircd.sh start "$dir/ircd" "$irc_port"
bash scripts/synapse.sh start "$dir/synapse" "$hs_port" "$dir/registration.yaml" "$dir/heisenbridge.yaml" >/dev/null
"$bin" -c "$dir/config.yaml" run >"$dir/mxbridge.log" 2>&1 &
pids+=($!)
our_pid=$!
"$venv/bin/heisenbridge" -v -c "$dir/heisenbridge.yaml" -o @hbuser:localhost "$hs" >"$dir/heisenbridge.log" 2>&1 &
pids+=($!)
hb_pid=$!
sleep 5

token() {
    bash scripts/synapse.sh register "$dir/synapse" "$hs_port" "$1" "$1-password" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
mx_token=$(token mxuser)
hb_token=$(token hbuser)
py=(python3 bench/peers/irc_bench.py)
say "setting up the IRC bridge's login and channel"
mx_room=$("${py[@]}" setup-mxbridge "$hs" "$mx_token" "$irc_port" "#mxbench" mxnick)
say "setting up heisenbridge's network and channel"
hb_room=$("${py[@]}" setup-heisenbridge "$hs" "$hb_token" "$irc_port" "#hbbench" hbnick)

{
    echo "# IRC bridges side by side, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"
    echo "# machine: $(nproc) cores, $(uname -m); Synapse $(grep -o 'matrix-synapse==[0-9.]*' scripts/synapse.sh | head -n1), InspIRCd $(dpkg-query -W -f '${Version}' inspircd 2>/dev/null)"
    echo "# InspIRCd config: irc/inspircd/test.conf; throttle: burst 7, then 1 line / 1.5 s (both)"
    echo "# IRC -> Matrix: $n_i2m lines; Matrix -> IRC: $n_m2i messages; latency: $samples probes each way"
    echo "# mxbridge-irc: release build with thin LTO, SQLite; heisenbridge 1.15.4"
    echo "# InspIRCd <connect>: localmax/globalmax 2000, maxchans 1000, commandrate 1000000, fakelag no"
    echo "[mxbridge-irc]"
    "${py[@]}" run "$hs" "$mx_token" "$mx_room" "$irc_port" "#mxbench" mxnick "$n_i2m" "$n_m2i" "$samples" 1.6
    echo "rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$our_pid/status")"
    echo "[heisenbridge]"
    "${py[@]}" run "$hs" "$hb_token" "$hb_room" "$irc_port" "#hbbench" hbnick "$n_i2m" "$n_m2i" "$samples" 1.6
    echo "rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$hb_pid/status")"
    if [ "$users" -gt 0 ]; then
        echo "# scale: $users logins per bridge, $per_user channels each (the bench's login above too)"
        say "scale: $users logins and $((users * per_user)) channels on the IRC bridge"
        echo "[mxbridge-irc at scale]"
        timeout 1500 "${py[@]}" scale mxbridge "$hs" "$dir/synapse/shared_secret" "$mx_token" \
            "$irc_port" "$users" "$per_user" mxs
        say "scale: $users logins and $((users * per_user)) channels on heisenbridge"
        echo "[heisenbridge at scale]"
        timeout 1500 "${py[@]}" scale heisenbridge "$hs" "$dir/synapse/shared_secret" "$hb_token" \
            "$irc_port" "$users" "$per_user" hbs
        sleep 15
        echo "[memory at scale]"
        for name_pid in "mxbridge-irc:$our_pid" "heisenbridge:$hb_pid"; do
            pid=${name_pid#*:}
            echo "${name_pid%%:*}_rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")"
            echo "${name_pid%%:*}_hwm_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")"
        done
    fi
} | tee "$out"
say "results in $out"
