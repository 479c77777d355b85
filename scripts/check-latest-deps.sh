#!/usr/bin/env bash
# check-latest-deps.sh — check that the library and the examples compile without a warning
# against the newest versions of every dependency that Cargo.toml allows, as a fresh bridge
# crate resolves them. The lock file pins older versions, so a deprecation in a new release
# upstream would otherwise reach bridge authors before this repository's CI.
#
# The tracked (and untracked, not ignored) files are copied to a scratch directory, where
# `cargo update` moves every dependency to its newest compatible version; then
# `cargo check --lib --examples --all-features --ignore-rust-version` (matrix-sdk-crypto, behind
# `encryption`, declares Rust 1.96 and builds on 1.95) runs with RUSTFLAGS="-D warnings" into
# its own target directory, $MXB_CACHE/target-latest (other versions and flags would otherwise
# rebuild the main one). The repository itself is not touched.
#
# Environment:
#   MXB_CACHE             cache root (default $HOME/.cache/mxbridge)
#   MXB_LATEST_TIMEOUT    seconds the update and the check may take together (default 1800)
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${MXB_CACHE:-$HOME/.cache/mxbridge}"
limit="${MXB_LATEST_TIMEOUT:-1800}"
deadline=$((SECONDS + limit))
left() { echo $((deadline > SECONDS ? deadline - SECONDS : 1)); }

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null \
    | tar -xf - -C "$scratch"

cd "$scratch"
# Prints what moved from the lock file ("Updating x vA -> vB").
timeout "$(left)" cargo update
CARGO_TARGET_DIR="$cache/target-latest" RUSTFLAGS="${RUSTFLAGS:-} -D warnings" \
    timeout "$(left)" cargo check --quiet --lib --examples --all-features --ignore-rust-version
echo "check-latest-deps.sh: no warnings with the newest compatible dependencies" >&2
