#!/usr/bin/env bash
# nio.sh — install the encrypting Matrix client that the end-to-end encryption tests drive
# (tests/e2ee/human.py): matrix-nio with its `e2e` extra and python-olm, in a cached venv.
# matrix-nio 0.26 encrypts and decrypts with vodozemac (pinned here too); human.py decrypts what
# it receives a second time with python-olm (libolm), an implementation of its own.
#
# Usage:
#   scripts/nio.sh install
#       Install the Debian packages it needs when one is missing (as root: apt-get; `apt-get
#       update` only when the first attempt fails): libolm-dev (olm's headers and library), and
#       g++ and make, with which python-olm 3.2.16 compiles the copy of olm its source ships and
#       links it into its extension. Then create (once) a venv with matrix-nio[e2e]==0.26.0,
#       vodozemac==0.10.0 and python-olm==3.2.16 (pinned) at
#       "${MXB_CACHE:-$HOME/.cache/mxbridge}/nio-venv" and print its path on stdout. A no-op (a few ms) when all of that is already there.
#
#   scripts/nio.sh python
#       Install if needed and print the venv's python on stdout.
#
# Diagnostics go to stderr; stdout carries only the result. Every failure exits non-zero with a
# message starting "nio.sh:". Nothing is skipped.
#
# Environment:
#   MXB_CACHE   cache root (default $HOME/.cache/mxbridge)
#   MXB_PYTHON  python used to create the venv (default python3, >= 3.10)
set -euo pipefail
# shellcheck source=scripts/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"

readonly NIO_VERSION="0.26.0"
readonly VODOZEMAC_VERSION="0.10.0"
readonly OLM_VERSION="3.2.16"
readonly PINS=("matrix-nio[e2e]==$NIO_VERSION" "vodozemac==$VODOZEMAC_VERSION" "python-olm==$OLM_VERSION")
readonly STAMP_TEXT="${PINS[*]}"
readonly CACHE_DIR="${MXB_CACHE:-$HOME/.cache/mxbridge}"
readonly VENV="$CACHE_DIR/nio-venv"
readonly STAMP="$VENV/.mxbridge-nio-version"
readonly VPY="$VENV/bin/python"

die() {
    printf 'nio.sh: error: %s\n' "$*" >&2
    exit 1
}
info() { printf 'nio.sh: %s\n' "$*" >&2; }

venv_ok() {
    [[ -x $VPY && -f $STAMP && "$(<"$STAMP")" == "$STAMP_TEXT" ]]
}

readonly DEBIAN_PACKAGES=(libolm-dev g++ make)

# The Debian packages of DEBIAN_PACKAGES not installed, one a line.
debs_missing() {
    local p
    for p in "${DEBIAN_PACKAGES[@]}"; do
        [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] ||
            printf '%s\n' "$p"
    done
}

install_debs() {
    local missing
    missing=$(debs_missing)
    [[ -z $missing ]] && return 0
    # shellcheck disable=SC2086 # one package a word
    set -- $missing
    command -v apt-get >/dev/null 2>&1 || die "missing $*, and there is no apt-get to install them"
    [[ $(id -u) == 0 ]] || die "missing $*; install them as root: apt-get install $*"
    info "installing Debian's $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q "$@" >&2; } ||
        die "apt-get install $* failed"
    missing=$(debs_missing)
    [[ -z $missing ]] || die "still missing after apt-get: $missing"
}

cmd_install() {
    if venv_ok && [[ -z $(debs_missing) ]]; then
        printf '%s\n' "$VENV"
        return 0
    fi
    mkdir -p "$CACHE_DIR" || die "cannot create $CACHE_DIR"
    # Serialise concurrent installs (parallel test processes).
    exec 9>"$CACHE_DIR/nio-venv.lock" || die "cannot open lock file"
    flock -w 1200 9 || die "timed out waiting for another install to finish"
    install_debs
    if venv_ok; then
        exec 9>&-
        printf '%s\n' "$VENV"
        return 0
    fi

    fresh_venv "matrix-nio $NIO_VERSION" "about a minute: python-olm compiles olm" "${PINS[@]}"
    local got
    got=$("$VPY" -c '
import importlib.metadata as m, nio, olm
from nio.crypto import ENCRYPTION_ENABLED
assert ENCRYPTION_ENABLED, "nio imports without its encryption support"
print(m.version("matrix-nio"), m.version("vodozemac"), m.version("python-olm"))
') || die "matrix-nio with encryption, or python-olm, does not import after install"
    [[ $got == "$NIO_VERSION $VODOZEMAC_VERSION $OLM_VERSION" ]] ||
        die "installed matrix-nio/vodozemac/python-olm are $got, wanted $NIO_VERSION $VODOZEMAC_VERSION $OLM_VERSION"
    printf '%s' "$STAMP_TEXT" >"$STAMP"
    exec 9>&-
    info "installed $STAMP_TEXT"
    printf '%s\n' "$VENV"
}

(($# == 1)) || die "usage: scripts/nio.sh install | python"
case $1 in
install) cmd_install ;;
python) cmd_install >/dev/null && printf '%s\n' "$VPY" ;;
*) die "unknown subcommand '$1' (install|python)" ;;
esac
