#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a while each (needs a nightly toolchain and
# `cargo install cargo-fuzz`). Not part of .ci/run: the proptest properties in
# src/server/transactions.rs cover the parser on stable on every run.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${MXB_CACHE:-$HOME/.cache/mxbridge}/target-fuzz}"
mkdir -p fuzz/corpus/transaction
# Seed the transaction corpus with a valid body.
printf '%s' '{"events":[{"event_id":"$a","room_id":"!r:x","sender":"@u:x","type":"m.room.message","content":{"body":"hi"}}],"ephemeral":[{"type":"m.typing","room_id":"!r:x","content":{}}]}' \
    >fuzz/corpus/transaction/seed.json
mkdir -p fuzz/corpus/registration_config
cp registration.example.yaml fuzz/corpus/registration_config/registration.yaml
for target in transaction registration_config; do
    echo "== fuzz $target for ${secs}s"
    cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048
done
