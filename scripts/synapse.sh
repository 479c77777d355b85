#!/usr/bin/env bash
# synapse.sh — install and run a real Synapse homeserver on loopback for
# mxbridge's end-to-end tests.
#
# Usage:
#   scripts/synapse.sh install
#       Create (once) a venv with matrix-synapse==1.163.2 (pinned) at
#       "${MXB_CACHE:-$HOME/.cache/mxbridge}/synapse-venv" and print its path
#       on stdout. A no-op (a few ms) when that version is already there.
#
#   scripts/synapse.sh start DIR PORT REGISTRATION_YAML...
#       Install if needed, write DIR/homeserver.yaml (server_name `localhost`,
#       client API only on 127.0.0.1:PORT, SQLite at DIR/homeserver.db, the
#       given appservice registrations, relaxed rate limits), start Synapse in
#       the background (PID in DIR/synapse.pid) and wait until
#       /_matrix/client/versions answers (at most MXB_SYNAPSE_START_TIMEOUT,
#       default 90 s). Prints the base URL (http://127.0.0.1:PORT) on stdout.
#       Secrets: DIR/shared_secret (registration shared secret, no trailing
#       newline) and DIR/secrets.env. Logs: DIR/homeserver.log (Synapse's own
#       log) and DIR/synapse.out (stdout/stderr, e.g. startup tracebacks).
#       Re-running `start` on a stopped DIR keeps its secrets, signing key and
#       database (a restart), and rewrites homeserver.yaml.
#
#   scripts/synapse.sh stop DIR
#       SIGTERM the Synapse whose PID is in DIR/synapse.pid (only that PID,
#       and only if it still is that DIR's Synapse), wait up to 30 s, then
#       SIGKILL. Succeeds when it is already gone.
#
#   scripts/synapse.sh register DIR PORT USERNAME PASSWORD [admin]
#       Register a user through the shared-secret admin API
#       (/_synapse/admin/v1/register) and print Synapse's JSON answer
#       (user_id, access_token, device_id, home_server) on stdout.
#
# Diagnostics go to stderr; stdout carries only the result. Every failure
# exits non-zero with a message starting "synapse.sh:". Nothing is skipped.
#
# Environment:
#   MXB_CACHE                  cache root (default $HOME/.cache/mxbridge)
#   MXB_PYTHON                 python used to create the venv (default python3, >= 3.10)
#   MXB_SYNAPSE_START_TIMEOUT  seconds to wait for /versions (default 90)
set -euo pipefail
# shellcheck source=scripts/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"

readonly SYNAPSE_VERSION="1.163.2"
readonly CACHE_DIR="${MXB_CACHE:-$HOME/.cache/mxbridge}"
readonly VENV="$CACHE_DIR/synapse-venv"
readonly STAMP="$VENV/.mxbridge-synapse-version"
readonly VPY="$VENV/bin/python"

die() {
    printf 'synapse.sh: error: %s\n' "$*" >&2
    exit 1
}
info() { printf 'synapse.sh: %s\n' "$*" >&2; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

# Quote a string as a YAML double-quoted scalar (also valid JSON).
yq() {
    local s=$1
    [[ $s != *[[:cntrl:]]* ]] || die "control character in value: $s"
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

check_port() {
    if ! [[ $1 =~ ^[1-9][0-9]{0,4}$ ]] || (($1 > 65535)); then
        die "invalid port: '$1'"
    fi
}

# ---------------------------------------------------------------- install ---

venv_ok() {
    [[ -x $VPY && -f $STAMP && "$(<"$STAMP")" == "$SYNAPSE_VERSION" ]]
}

cmd_install() {
    if venv_ok; then
        printf '%s\n' "$VENV"
        return 0
    fi
    mkdir -p "$CACHE_DIR" || die "cannot create $CACHE_DIR"
    # Serialise concurrent installs (parallel test processes).
    exec 9>"$CACHE_DIR/synapse-venv.lock" || die "cannot open lock file"
    flock -w 1200 9 || die "timed out waiting for another install to finish"
    if venv_ok; then
        exec 9>&-
        printf '%s\n' "$VENV"
        return 0
    fi

    fresh_venv "Synapse $SYNAPSE_VERSION" "usually 20-40 s" "matrix-synapse==$SYNAPSE_VERSION"
    local got
    got=$("$VPY" -c 'import synapse; print(synapse.__version__)') ||
        die "synapse does not import after install"
    [[ $got == "$SYNAPSE_VERSION" ]] || die "installed synapse is $got, wanted $SYNAPSE_VERSION"
    printf '%s' "$SYNAPSE_VERSION" >"$STAMP"
    exec 9>&-
    info "installed Synapse $got"
    printf '%s\n' "$VENV"
}

# ------------------------------------------------------------------ start ---

# Is PID $1 alive? A zombie (exited, not yet reaped, e.g. our own child) is not.
alive() {
    local st
    kill -0 "$1" 2>/dev/null || return 1
    st=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $st != Z && $st != X ]]
}

# SIGTERM one PID, wait up to 30 s, then SIGKILL and wait up to 10 s more.
terminate() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 300; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    info "Synapse (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    die "Synapse (pid $pid) survived SIGKILL"
}

# Is the PID in file $1 a live Synapse started for config $2?
pid_is_our_synapse() {
    local pid=$1 config=$2 cmdline
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *synapse.app.homeserver* && $cmdline == *"$config"* ]]
}

read_pid() {
    local f=$1
    [[ -f $f ]] || return 1
    local pid
    pid=$(tr -d ' \n' <"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    printf '%s' "$pid"
}

# A limiter relaxed to per_second 1000 / burst_count 10000.
rl() { printf '{per_second: 1000, burst_count: 10000}'; }

write_config() {
    local dir=$1 port=$2
    shift 2
    local regs=("$@")

    # Secrets survive restarts of the same DIR.
    local REGISTRATION_SHARED_SECRET="" MACAROON_SECRET_KEY="" FORM_SECRET=""
    if [[ -f $dir/secrets.env ]]; then
        # shellcheck disable=SC1091
        source "$dir/secrets.env"
    fi
    : "${REGISTRATION_SHARED_SECRET:=$(random_hex 32)}"
    : "${MACAROON_SECRET_KEY:=$(random_hex 32)}"
    : "${FORM_SECRET:=$(random_hex 32)}"
    (
        umask 077
        printf 'REGISTRATION_SHARED_SECRET=%s\nMACAROON_SECRET_KEY=%s\nFORM_SECRET=%s\n' \
            "$REGISTRATION_SHARED_SECRET" "$MACAROON_SECRET_KEY" "$FORM_SECRET" >"$dir/secrets.env"
        printf '%s' "$REGISTRATION_SHARED_SECRET" >"$dir/shared_secret"
    )

    cat >"$dir/log.config" <<EOF
# Generated by scripts/synapse.sh
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $(yq "$dir/homeserver.log")
    encoding: utf8
loggers:
  synapse.appservice:
    level: DEBUG
  synapse.storage.SQL:
    level: INFO
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
EOF

    {
        cat <<EOF
# Generated by scripts/synapse.sh — rewritten on every start.
server_name: localhost
public_baseurl: "http://127.0.0.1:$port/"
pid_file: $(yq "$dir/homeserver.pid")
log_config: $(yq "$dir/log.config")
signing_key_path: $(yq "$dir/localhost.signing.key")
media_store_path: $(yq "$dir/media")
# Large enough for the media tests' streamed files.
max_upload_size: 256M
listeners:
  - port: $port
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client, media]
        compress: false
database:
  name: sqlite3
  args:
    database: $(yq "$dir/homeserver.db")
report_stats: false
federation_domain_whitelist: []
trusted_key_servers: []
suppress_key_server_warning: true
url_preview_enabled: false
enable_metrics: false
enable_registration: false
registration_shared_secret: "$REGISTRATION_SHARED_SECRET"
macaroon_secret_key: "$MACAROON_SECRET_KEY"
form_secret: "$FORM_SECRET"
presence:
  enabled: true
app_service_config_files:
EOF
        local r
        for r in "${regs[@]}"; do
            printf '  - %s\n' "$(yq "$r")"
        done
        cat <<EOF
experimental_features:
  msc2409_to_device_messages_enabled: true
  msc3202_transaction_extensions: true
  msc3983_appservice_otk_claims: true
  msc3984_appservice_key_query: true
# Rate limiting relaxed so tests never hit 429.
rc_message: $(rl)
rc_registration: $(rl)
rc_login:
  address: $(rl)
  account: $(rl)
  failed_attempts: $(rl)
rc_admin_redaction: $(rl)
rc_joins:
  local: $(rl)
  remote: $(rl)
rc_joins_per_room: $(rl)
rc_invites:
  per_room: $(rl)
  per_user: $(rl)
  per_issuer: $(rl)
rc_3pid_validation: $(rl)
rc_media_create: $(rl)
rc_presence:
  per_user: $(rl)
rc_delayed_event_mgmt: $(rl)
rc_reports: $(rl)
rc_room_creation: $(rl)
# Also read by Synapse 1.163.2 (synapse/config/ratelimiting.py):
rc_registration_token_validity: $(rl)
rc_key_requests: $(rl)
rc_third_party_invite: $(rl)
rc_user_directory: $(rl)
rc_profile: $(rl)
EOF
    } >"$dir/homeserver.yaml.tmp"
    mv "$dir/homeserver.yaml.tmp" "$dir/homeserver.yaml"
}

log_tail() {
    local dir=$1
    if [[ -s $dir/synapse.out ]]; then
        printf -- '----- tail of %s -----\n' "$dir/synapse.out" >&2
        tail -n 25 "$dir/synapse.out" >&2
    fi
    if [[ -s $dir/homeserver.log ]]; then
        printf -- '----- tail of %s -----\n' "$dir/homeserver.log" >&2
        tail -n 30 "$dir/homeserver.log" >&2
    fi
    printf -- '-----\n' >&2
}

cmd_start() {
    (($# >= 3)) || die "usage: start DIR PORT REGISTRATION_YAML..."
    local dir=$1 port=$2
    shift 2
    check_port "$port"
    command -v curl >/dev/null 2>&1 || die "curl is needed to poll Synapse; install it"
    mkdir -p "$dir" || die "cannot create $dir"
    dir=$(realpath "$dir")
    local regs=() r
    for r in "$@"; do
        [[ -f $r && -r $r ]] || die "registration file not found or unreadable: $r"
        regs+=("$(realpath "$r")")
    done

    cmd_install >/dev/null

    local config="$dir/homeserver.yaml" old
    if old=$(read_pid "$dir/synapse.pid") && pid_is_our_synapse "$old" "$config"; then
        die "a Synapse (pid $old) is already running for $dir; run 'stop $dir' first"
    fi
    # Refuse a busy port: otherwise /versions could be answered by someone else.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is already in use"
    fi

    mkdir -p "$dir/media"
    write_config "$dir" "$port" "${regs[@]}"

    if [[ ! -s $dir/localhost.signing.key ]]; then
        "$VPY" -c '
import sys, signedjson.key as k
key = k.generate_signing_key("a_" + __import__("secrets").token_hex(2))
with open(sys.argv[1], "w") as f:
    k.write_signing_keys(f, [key])
' "$dir/localhost.signing.key" || die "could not generate the signing key"
    fi

    rm -f "$dir/synapse.pid" "$dir/homeserver.pid"
    : >"$dir/synapse.out"
    # Own session, all stdio detached: the caller (e.g. a Rust test reading
    # our stdout) must not keep a pipe open through Synapse.
    (cd "$dir" && exec setsid "$VPY" -m synapse.app.homeserver -c "$config" \
        </dev/null >>"$dir/synapse.out" 2>&1) &
    local pid=$!
    printf '%s\n' "$pid" >"$dir/synapse.pid"
    info "started Synapse $SYNAPSE_VERSION (pid $pid) in $dir, waiting for 127.0.0.1:$port ..."

    local timeout=${MXB_SYNAPSE_START_TIMEOUT:-90} url="http://127.0.0.1:$port" rc
    [[ $timeout =~ ^[0-9]+$ ]] || die "MXB_SYNAPSE_START_TIMEOUT must be whole seconds, got '$timeout'"
    local deadline=$((SECONDS + timeout)) t0=${EPOCHREALTIME/[.,]/}
    while :; do
        if ! alive "$pid"; then
            wait "$pid" 2>/dev/null && rc=0 || rc=$?
            log_tail "$dir"
            rm -f "$dir/synapse.pid"
            die "Synapse exited during startup (exit code $rc); see $dir/synapse.out and $dir/homeserver.log"
        fi
        if curl -fsS --max-time 2 -o /dev/null "$url/_matrix/client/versions" 2>/dev/null; then
            break
        fi
        if ((SECONDS >= deadline)); then
            log_tail "$dir"
            terminate "$pid"
            rm -f "$dir/synapse.pid"
            die "Synapse did not answer $url/_matrix/client/versions within ${timeout}s; stopped it (pid $pid)"
        fi
        sleep 0.2
    done
    # The answer must come from our process (not a racing one on the same port).
    alive "$pid" || { log_tail "$dir"; die "Synapse died right after answering"; }
    local ms=$(((${EPOCHREALTIME/[.,]/} - t0) / 1000))
    info "Synapse ready at $url after $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
    printf '%s\n' "$url"
}

# ------------------------------------------------------------------- stop ---

cmd_stop() {
    (($# == 1)) || die "usage: stop DIR"
    local dir=$1
    [[ -d $dir ]] || { info "no such directory $dir; nothing to stop"; return 0; }
    dir=$(realpath "$dir")
    local config="$dir/homeserver.yaml" pid
    if ! pid=$(read_pid "$dir/synapse.pid") && ! pid=$(read_pid "$dir/homeserver.pid"); then
        info "no PID file in $dir; nothing to stop"
        return 0
    fi
    if ! pid_is_our_synapse "$pid" "$config"; then
        info "Synapse (pid $pid) for $dir is not running"
        rm -f "$dir/synapse.pid" "$dir/homeserver.pid"
        return 0
    fi
    terminate "$pid"
    # It has exited; give init a moment to reap it so that the PID is gone
    # too (bounded, 2 s; a lingering zombie holds no port or files).
    local i
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    rm -f "$dir/synapse.pid" "$dir/homeserver.pid"
    info "stopped Synapse (pid $pid)"
}

# --------------------------------------------------------------- register ---

cmd_register() {
    (($# == 4 || $# == 5)) || die "usage: register DIR PORT USERNAME PASSWORD [admin]"
    local dir=$1 port=$2 user=$3 password=$4 admin=${5:-}
    check_port "$port"
    [[ -z $admin || $admin == admin ]] || die "5th argument must be 'admin' or absent, got '$admin'"
    [[ -f $dir/shared_secret ]] || die "$dir/shared_secret not found (was Synapse started with 'start $dir ...'?)"
    local py=$VPY
    [[ -x $py ]] || py=python3
    "$py" - "http://127.0.0.1:$port" "$dir/shared_secret" "$user" "$password" "${admin:-notadmin}" <<'EOF'
import hashlib, hmac, json, sys, urllib.error, urllib.request

base, secret_file, user, password, admin = sys.argv[1:6]
with open(secret_file, "rb") as f:
    secret = f.read().strip()
url = base + "/_synapse/admin/v1/register"

def call(req):
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        sys.stderr.write(f"synapse.sh: error: {req.get_method()} {url} -> HTTP {e.code}: {body}\n")
        sys.exit(1)
    except (urllib.error.URLError, OSError) as e:
        sys.stderr.write(f"synapse.sh: error: {req.get_method()} {url} failed: {e}\n")
        sys.exit(1)

nonce = call(urllib.request.Request(url))["nonce"]
mac = hmac.new(secret, digestmod=hashlib.sha1)
for part in (nonce, user, password):
    mac.update(part.encode("utf-8"))
    mac.update(b"\x00")
mac.update(admin.encode("ascii"))
body = {
    "nonce": nonce,
    "username": user,
    "password": password,
    "admin": admin == "admin",
    "mac": mac.hexdigest(),
}
req = urllib.request.Request(
    url,
    data=json.dumps(body).encode("utf-8"),
    headers={"Content-Type": "application/json"},
    method="POST",
)
print(json.dumps(call(req)))
EOF
}

# ------------------------------------------------------------------- main ---

(($# >= 1)) || usage
cmd=$1
shift
case $cmd in
install) (($# == 0)) || die "usage: install"; cmd_install ;;
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
register) cmd_register "$@" ;;
-h | --help | help) usage 0 ;;
*) die "unknown subcommand '$cmd' (install|start|stop|register)" ;;
esac
