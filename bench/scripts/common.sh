# Sourced by intake.sh and bridging.sh: the PostgreSQL URLs of the mxbridge rows, which
# of those rows can run here, and the CPU pinning (load tool on CPU 0, server on CPU 1).
# Environment: MXBRIDGE_BENCH_POSTGRES, MXBRIDGE_BENCH_POSTGRES_SOCKET, MXB_PIN (see either script).

PG_URL=${MXBRIDGE_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
PG_SOCKET_URL=${MXBRIDGE_BENCH_POSTGRES_SOCKET:-postgres:///test?host=/var/run/postgresql&user=postgres}
# Loopback TCP without an sslmode goes without TLS (docs/deploy.md); the -tls row asks for it.
case $PG_URL in *\?*) PG_TLS_URL="$PG_URL&sslmode=prefer" ;; *) PG_TLS_URL="$PG_URL?sslmode=prefer" ;; esac

# add_postgres_servers: appends to SERVERS the PostgreSQL rows whose server answers, and says
# which are skipped.
add_postgres_servers() {
    if command -v pg_isready >/dev/null && pg_isready -q -d "$PG_URL"; then
        SERVERS+=(mxbridge-postgres mxbridge-postgres-tls)
    else
        echo "PostgreSQL at $PG_URL is not reachable: skipping mxbridge-postgres(-tls)"
    fi
    if command -v pg_isready >/dev/null && pg_isready -q -d "$PG_SOCKET_URL"; then
        SERVERS+=(mxbridge-postgres-socket)
    else
        echo "PostgreSQL at $PG_SOCKET_URL is not reachable: skipping mxbridge-postgres-socket"
    fi
}

LOAD_PIN=()
SERVER_PIN=()
if [ "${MXB_PIN:-1}" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    LOAD_PIN=(taskset -c 0)
    SERVER_PIN=(taskset -c 1)
fi
