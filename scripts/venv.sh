# Sourced by the scripts that keep a Python venv under ~/.cache/mxbridge (synapse.sh, nio.sh).
# The caller defines die, info, VENV and VPY, and holds its install lock.

# fresh_venv WHAT HOW_LONG PIN...: makes $VENV anew with the PINs installed from PyPI.
fresh_venv() {
    local what=$1 how_long=$2
    shift 2
    local py="${MXB_PYTHON:-python3}"
    command -v "$py" >/dev/null 2>&1 || die "$py not found; install Python >= 3.10 (or set MXB_PYTHON)"
    "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
        die "$py is $("$py" -V 2>&1); $what needs Python >= 3.10"
    info "installing $* into $VENV ($how_long) ..."
    rm -rf "$VENV"
    "$py" -m venv "$VENV" >&2 ||
        die "'$py -m venv' failed (on Debian: apt-get install python3-venv)"
    "$VPY" -m pip install --disable-pip-version-check --no-input --quiet "$@" >&2 ||
        die "pip install $* failed (is PyPI reachable?)"
}
