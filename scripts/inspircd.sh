#!/usr/bin/env bash
# A private InspIRCd 3 on loopback for the IRC bridge's tests, demo and benchmark, with the
# config kept in the repository (irc/inspircd/). Installs Debian's `inspircd` package when
# the server is missing (as root: apt-get). The server never runs as a system service here.
#
#   scripts/inspircd.sh install
#   scripts/inspircd.sh start DIR PORT [CONFIG] [TLS_PORT]
#                     (CONFIG: default irc/inspircd/test.conf; with TLS_PORT, also TLS there:
#                     irc/inspircd/tls.conf and a self-signed certificate, DIR/cert.pem)
#   scripts/inspircd.sh stop DIR
#   scripts/inspircd.sh restart DIR               (same port and config)
#
# `start` waits until the port answers and fails loudly if it does not.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

bin() { command -v inspircd || { [ -x /usr/sbin/inspircd ] && echo /usr/sbin/inspircd; } || true; }

install() {
    if [ -n "$(bin)" ]; then return 0; fi
    echo "inspircd.sh: installing Debian's inspircd" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q inspircd >&2 || { apt-get update -q >&2 && apt-get install -y -q inspircd >&2; }
    # The package may have started the system's instance; ours are private.
    if [ -f /var/run/inspircd/inspircd.pid ]; then
        kill "$(cat /var/run/inspircd/inspircd.pid)" 2>/dev/null || true
    fi
    [ -n "$(bin)" ] || { echo "inspircd.sh: inspircd is not installed" >&2; exit 1; }
}

wait_port() {
    local port="$1"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

start() {
    local dir="$1" port="$2" conf="${3:-$root/irc/inspircd/test.conf}" tls_port="${4:-}"
    install
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" "$conf" > "$dir/inspircd.conf"
    if [ -n "$tls_port" ]; then
        if [ ! -f "$dir/cert.pem" ]; then
            openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
                -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
                -addext basicConstraints=critical,CA:FALSE \
                -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null \
                || { echo "inspircd.sh: openssl could not make a certificate" >&2; exit 1; }
        fi
        sed -e "s|@DIR@|$dir|g" -e "s|@TLSPORT@|$tls_port|g" "$root/irc/inspircd/tls.conf" \
            >> "$dir/inspircd.conf"
    fi
    echo "$port" > "$dir/port"
    echo "$tls_port" > "$dir/tls_port"
    echo "$conf" > "$dir/template"
    local runas=()
    [ "$(id -u)" = 0 ] && runas=(--runasroot)
    # Debian's InspIRCd 3 with ssl_gnutls may crash as it stops: no core file in the caller's
    # directory for that.
    ulimit -c 0
    "$(bin)" --config "$dir/inspircd.conf" "${runas[@]}" --nolog >"$dir/stdout.log" 2>&1 || {
        echo "inspircd.sh: inspircd did not start:" >&2
        cat "$dir/stdout.log" >&2
        exit 1
    }
    if ! wait_port "$port" || { [ -n "$tls_port" ] && ! wait_port "$tls_port"; }; then
        echo "inspircd.sh: inspircd does not answer on port $port ${tls_port:+or $tls_port}" >&2
        tail -n 20 "$dir/stdout.log" "$dir/ircd.log" >&2 2>/dev/null || true
        exit 1
    fi
}

stop() {
    local dir="$1" pid
    [ -f "$dir/inspircd.pid" ] || return 0
    pid="$(cat "$dir/inspircd.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/inspircd.pid"
}

case "${1:-}" in
    install) install ;;
    start) start "$2" "$3" "${4:-}" "${5:-}" ;;
    stop) stop "$2" ;;
    restart) stop "$2"; start "$2" "$(cat "$2/port")" "$(cat "$2/template")" "$(cat "$2/tls_port" 2>/dev/null)" ;;
    *) echo "usage: scripts/inspircd.sh install | start DIR PORT [CONFIG] [TLS_PORT] | stop DIR | restart DIR" >&2; exit 2 ;;
esac
