#!/usr/bin/env bash
# Run the whole test suite: lint, type check, then every test (end-to-end included).
#
# Installs what the tests need when it is missing: as root with apt-get (Postfix's smtp-sink, swaks,
# Knot DNS, Dovecot's LMTP server, openssl), and the project with its test extras into .venv.
# No mail or DNS daemon is left running: Postfix is installed with "No configuration" and any
# service the packages started is stopped again.
#
# Usage: scripts/test.sh [pytest args...]      e.g. scripts/test.sh -k maildir -x
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"

CURRENT_STEP="start"
step() { CURRENT_STEP="$*"; printf '\n==> %s\n' "$*" >&2; }
on_exit() {
    local rc=$?
    if [ -n "${ADDED_POLICY:-}" ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "$rc" -ne 0 ]; then
        printf '\ntest.sh: FAILED at step: %s (exit %d)\n' "$CURRENT_STEP" "$rc" >&2
    fi
}
trap on_exit EXIT

# Debian package -> a file that shows it is installed.
declare -A NEEDED=(
    [postfix]=/usr/sbin/smtp-sink
    [swaks]=/usr/bin/swaks
    [knot]=/usr/sbin/knotd
    [knot-dnsutils]=/usr/bin/kdig
    [dovecot-lmtpd]=/usr/lib/dovecot/lmtp
    [openssl]=/usr/bin/openssl
)
MISSING=()
for pkg in "${!NEEDED[@]}"; do
    [ -e "${NEEDED[$pkg]}" ] || MISSING+=("$pkg")
done

if [ "${#MISSING[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        step "checking system packages"
        printf 'missing packages: %s\nrun as root: apt-get install %s\n' \
            "${MISSING[*]}" "${MISSING[*]}" >&2
        exit 1
    fi
    step "apt-get install ${MISSING[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # "No configuration": Postfix installs its tools but never listens on port 25.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Keep package scripts from starting daemons where policy-rc.d is honoured (containers).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        ADDED_POLICY=1
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
    fi
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${MISSING[@]}"
    if [ -n "${ADDED_POLICY:-}" ]; then rm -f /usr/sbin/policy-rc.d; ADDED_POLICY=; fi
    step "stopping services the packages may have started"
    for svc in postfix dovecot knot; do
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
            systemctl stop "$svc" && systemctl disable "$svc" >/dev/null 2>&1 || true
            echo "stopped $svc" >&2
        elif command -v service >/dev/null 2>&1 && service "$svc" status >/dev/null 2>&1; then
            service "$svc" stop || true
            echo "stopped $svc" >&2
        fi
    done
fi

step "installing meta1py and test dependencies into .venv"
"$ROOT/scripts/install.sh" test

if [ "$(id -u)" -eq 0 ]; then
    # As root, the end-to-end tests start mcp as root and mcp drops every worker to an
    # unprivileged account, which must be able to reach the Python installation and the project
    # (pyenv-style interpreters live under /root, mode 0700). Grant traversal (o+x) only.
    step "letting unprivileged worker accounts reach the Python installation"
    for start in "$("$VENV/bin/python" -c 'import sys; print(sys.base_prefix)')" "$ROOT"; do
        d="$start"
        while [ "$d" != "/" ]; do chmod o+x "$d"; d="$(dirname "$d")"; done
    done
    runuser -u nobody -- "$VENV/bin/python" -c 'import meta1py.smtps.main, meta1py.qmgr.main' \
        || { echo "test.sh: the nobody account cannot import meta1py with $VENV/bin/python" >&2; exit 1; }
fi

step "ruff check meta1py tests bench"
LINT_PATHS=(meta1py tests)
[ -d bench ] && LINT_PATHS+=(bench)
"$VENV/bin/ruff" check "${LINT_PATHS[@]}"

step "mypy"
"$VENV/bin/mypy"

step "pytest -q $*"
"$VENV/bin/pytest" -q "$@"

CURRENT_STEP="done"
printf '\n==> all checks passed\n' >&2
