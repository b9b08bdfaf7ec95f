#!/usr/bin/env bash
# Run the whole test suite: lint, type check, then every test (end-to-end included).
#
# Installs what the tests need when it is missing: as root with apt-get (Postfix's smtp-sink, swaks,
# Knot DNS, Dovecot's LMTP server, openssl, pflogsumm, fail2ban, postfix_exporter, Chromium and its
# chromedriver), and the project with its test extras into .venv.
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
    # swaks --tls needs IO::Socket::SSL (and, through it, Net::SSLeay); swaks only recommends it.
    [libio-socket-ssl-perl]=/usr/share/perl5/IO/Socket/SSL.pm
    [knot]=/usr/sbin/knotd
    [knot-dnsutils]=/usr/bin/kdig
    [dovecot-lmtpd]=/usr/lib/dovecot/lmtp
    [openssl]=/usr/bin/openssl
    # tests/unit/maps/test_cdb_file.py: our CDB files read by tinycdb's cdb, and its files by us.
    [tinycdb]=/usr/bin/cdb
    # meta1 setup --sendmail compiles meta1-postdrop, the setgid pickup helper
    # (tests/e2e/test_sendmail_compat.py).
    [gcc]=/usr/bin/gcc
    [libc6-dev]=/usr/include/stdio.h
    # tests/e2e/test_metrics.py runs meta1 monitor on a terminal: a detached tmux session.
    [tmux]=/usr/bin/tmux
    # tests/e2e/test_log_formats.py: log_format = postfix read by the real pflogsumm and by
    # fail2ban-regex with Debian's postfix filter (the fail2ban service is stopped below).
    [pflogsumm]=/usr/sbin/pflogsumm
    [fail2ban]=/usr/bin/fail2ban-regex
    # ... and by postfix_exporter (the test starts its own on a loopback port; the packaged
    # service is stopped below).
    [prometheus-postfix-exporter]=/usr/bin/prometheus-postfix-exporter
    # tests/e2e/test_container.py: rootful podman with runc, netavark (which needs iptables for
    # published ports) and mmdebstrap for the base image. None starts a daemon on installation
    # (with policy-rc.d as below); podman enables podman.socket, podman.service,
    # podman-restart.service and podman-auto-update.timer for the next boot.
    [podman]=/usr/bin/podman
    [runc]=/usr/sbin/runc
    [netavark]=/usr/lib/podman/netavark
    [aardvark-dns]=/usr/lib/podman/aardvark-dns
    [iptables]=/usr/sbin/iptables
    [mmdebstrap]=/usr/bin/mmdebstrap
    # tests/e2e/test_testmode_web.py: test mode's web page in headless Chromium, driven through
    # Debian's chromedriver (selenium, from the test extra, is the client).
    [chromium]=/usr/bin/chromium
    [chromium-driver]=/usr/bin/chromedriver
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
    for svc in postfix dovecot knot fail2ban prometheus-postfix-exporter podman.socket podman-restart podman-auto-update.timer; do
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
    # As root the end-to-end tests run the production mode: mcp as root, each worker as its own
    # user (meta1q, meta1r, meta1c, meta1s). Workers import modules after they drop privileges, so
    # the venv's interpreter must be readable by them; install.sh sees to it (Debian's python3
    # rather than a pyenv build under /root). Nothing here opens up the file system for them:
    # if this check fails, mcp would refuse to start the same way.
    step "checking that an unprivileged user can run the venv's Python and import meta1py"
    # The checkout itself (with .venv inside it) must be reachable too. A clone under a private
    # directory (a home of mode 0700) is opened for traversal only (o+x), loudly; the Python
    # installation is never touched here.
    d="$ROOT"
    while [ "$d" != "/" ]; do
        if [ "$(( 0$(stat -c %a "$d") & 01 ))" -eq 0 ]; then
            echo "test.sh: $d is closed to other users; chmod o+x so the worker users reach the checkout" >&2
            chmod o+x "$d"
        fi
        d="$(dirname "$d")"
    done
    runuser -u nobody -- "$VENV/bin/python" -c 'import encodings.unicode_escape, meta1py.smtps.main, meta1py.qmgr.main' \
        || { echo "test.sh: the nobody account cannot import meta1py with $VENV/bin/python" >&2; exit 1; }
fi

step "ruff check meta1py testing tests bench"
LINT_PATHS=(meta1py testing tests)
[ -d bench ] && LINT_PATHS+=(bench)
"$VENV/bin/ruff" check "${LINT_PATHS[@]}"

step "mypy"
"$VENV/bin/mypy"

step "pytest -q $*"
"$VENV/bin/pytest" -q "$@"

if [ "$(id -u)" -eq 0 ] && [ "$#" -eq 0 ]; then
    # The second configuration: every worker as one throw-away user (tests/e2e/conftest.py).
    # The soak and the container image do not depend on the worker accounts: once is enough.
    step "pytest -q tests/e2e (every worker as one user)"
    META1_TEST_ACCOUNTS=one "$VENV/bin/pytest" -q tests/e2e -p no:cacheprovider \
        --ignore=tests/e2e/test_soak.py --ignore=tests/e2e/test_container.py
fi

CURRENT_STEP="done"
printf '\n==> all checks passed\n' >&2
