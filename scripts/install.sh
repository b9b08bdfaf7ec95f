#!/usr/bin/env bash
# Install meta1py into a virtualenv in the project root (.venv), editable.
#
# Works on a fresh Debian 12 machine. Idempotent: run it again to pick up new dependencies.
# As root it installs python3-venv with apt-get when missing; otherwise it says what to install.
#
# Usage: scripts/install.sh [extra]      e.g. scripts/install.sh test  (installs '.[test]')
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRA="${1:-}"

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'install.sh: FAILED: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || {
    if [ "$(id -u)" -eq 0 ]; then
        step "installing python3"
        DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 || die "apt-get install python3"
    else
        die "python3 is missing; run as root: apt-get install python3 python3-venv"
    fi
}

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "python3 >= 3.11 is needed (found $(python3 --version 2>&1))"

# Debian splits venv and ensurepip into python3-venv; without it `python3 -m venv` fails.
if [ ! -x "$VENV/bin/python" ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        step "installing python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv \
            || die "apt-get install python3-venv"
    else
        die "python3-venv is missing; run as root: apt-get install python3-venv"
    fi
fi

# The workers drop to unprivileged users (meta1q, meta1r, meta1c, meta1s) and import the standard
# library lazily after the drop, so the interpreter behind the venv must be readable by every user.
# A pyenv build under /root (mode 0700) is not: prefer Debian's own python3 when that is the case.
world_readable() {  # every directory from / to $1 lets others in, and $1 itself is readable
    local d="$1"
    [ -r "$d" ] || return 1
    while [ "$d" != "/" ]; do
        [ "$(( 0$(stat -c %a "$d") & 01 ))" -ne 0 ] || return 1
        d="$(dirname "$d")"
    done
}
PYTHON="$(command -v python3)"
STDLIB="$("$PYTHON" -c 'import os; print(os.path.dirname(os.__file__))')"
if ! world_readable "$STDLIB"; then
    for candidate in /usr/bin/python3.11 /usr/bin/python3; do
        if [ -x "$candidate" ] \
                && "$candidate" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
                && world_readable "$("$candidate" -c 'import os; print(os.path.dirname(os.__file__))')"; then
            step "$PYTHON keeps its standard library where other users cannot read it ($STDLIB); using $candidate"
            PYTHON="$candidate"
            break
        fi
    done
fi

if [ -x "$VENV/bin/python" ] && [ "$(id -u)" -eq 0 ] \
        && ! world_readable "$("$VENV/bin/python" -c 'import os; print(os.path.dirname(os.__file__))')" \
        && [ "$PYTHON" != "$(command -v python3)" ]; then
    step "recreating $VENV on $PYTHON (the worker users could not read the old interpreter)"
    rm -rf "$VENV"
fi

if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV" || die "$PYTHON -m venv $VENV"
fi

TARGET="$ROOT"
if [ -n "$EXTRA" ]; then TARGET="$ROOT[$EXTRA]"; fi
# Re-install only when the dependencies may have changed: the stamp records pyproject.toml's hash
# and the extras, so a second run is fast and works offline.
STAMP="$VENV/.meta1py-install-stamp"
# The test extra also installs the test helpers, a package of their own (testing/), not in the
# meta1py wheel.
# Editable installs as a path in a .pth file (setuptools' "compat" mode), not an import hook: the
# hook costs every interpreter start 15 ms (37 ms instead of 22 for `python -c pass`), and every
# `meta1` command and `meta1 run` pays it (bench/startup.py).
EDITABLE=(--config-settings editable_mode=compat)
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/testing/pyproject.toml" | sha256sum | cut -d' ' -f1) ${EXTRA:-none} compat"
PROBE='import meta1py'
case ",$EXTRA," in *,test,*) PROBE='import meta1py, meta1py_testing' ;; esac
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
        && "$VENV/bin/python" -c "$PROBE" >/dev/null 2>&1; then
    step "up to date: $TARGET"
else
    step "pip install -e $TARGET"
    "$VENV/bin/python" -m pip install -q "${EDITABLE[@]}" -e "$TARGET" || die "pip install -e $TARGET"
    case ",$EXTRA," in
        *,test,*)
            step "pip install -e $ROOT/testing (the test helpers)"
            "$VENV/bin/python" -m pip install -q --no-deps "${EDITABLE[@]}" -e "$ROOT/testing" \
                || die "pip install -e $ROOT/testing"
            ;;
    esac
    printf '%s\n' "$WANT" > "$STAMP"
fi
step "installed: $("$VENV/bin/python" -c 'import meta1py, sys; print(meta1py.__name__, sys.version.split()[0])')"
