#!/usr/bin/env bash
# Runs every test: unit, router, store (SQLite and PostgreSQL), crash, and end to end against a
# real Synapse that scripts/synapse.sh installs into a cached venv, and the IRC bridge's against
# Synapse and InspIRCd (scripts/inspircd.sh installs Debian's package). Needs PostgreSQL on
# 127.0.0.1:5432 (trust auth, database `test`) unless MXBRIDGE_TEST_POSTGRES names another.
# Fails, never skips, when PostgreSQL or Synapse is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export MXB_CACHE="${MXB_CACHE:-$HOME/.cache/mxbridge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MXB_CACHE/target}"
export MXBRIDGE_TEST_POSTGRES="${MXBRIDGE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
export MXBRIDGE_TEST_SYNAPSE=1

# PostgreSQL must answer; these machines normally run it already.
if ! command -v psql >/dev/null || ! psql "$MXBRIDGE_TEST_POSTGRES" -qtAc 'select 1' >/dev/null 2>&1; then
    echo "test.sh: PostgreSQL does not answer at $MXBRIDGE_TEST_POSTGRES" >&2
    exit 1
fi
# Synapse and InspIRCd: install (cached) before the tests so a failure is reported once and
# clearly.
bash scripts/synapse.sh install >/dev/null
bash scripts/nio.sh install >/dev/null
bash scripts/inspircd.sh install

# The library and the IRC bridge (its own crate, with its end-to-end suite against Synapse and
# InspIRCd) in one build, so the library is compiled once, with every feature.
# `--ignore-rust-version`: the `encryption` feature's matrix-sdk-crypto 0.19 declares Rust 1.96
# and builds on the 1.95 toolchain (see Cargo.toml).
cargo test -p mxbridge -p mxbridge-irc --all-features --ignore-rust-version "$@"
