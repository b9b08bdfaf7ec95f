#!/bin/bash
# meta1-entrypoint -- start meta1py in a container.
#
# SYNOPSIS
#     meta1-entrypoint [run [OPTIONS...]]       start mcp (the default command)
#     meta1-entrypoint healthcheck              exit 0 when the SMTP port greets with 220
#     meta1-entrypoint meta1 ARGS...            another meta1 command (check-config, queue list)
#     meta1-entrypoint COMMAND ARGS...          anything else, as it is (bash, ...)
#
# DESCRIPTION
#     Before "run" and "meta1 ...", writes two small files into $META1_RUNTIME_DIR that the
#     configuration includes (see contrib/container/meta1.conf):
#
#         paths.conf    queue_directory and mail_directory: the two volumes; with META1_TEST=1
#                       also test_mode { listen; allow_non_loopback; } (the control API)
#         listen.conf   listen_socket sections for smtps: $META1_LISTEN_ADDRESS:$META1_PORT, and
#                       port 25 on the same address when this process has CAP_NET_BIND_SERVICE
#                       in its effective capability set (podman run --cap-add NET_BIND_SERVICE)
#
#     and then execs meta1 (no shell stays behind), so that mcp is the container's main process:
#     SIGTERM from "podman stop" reaches it, it stops its workers in order and exits 0, and its
#     log lines go to stderr, the container's log.
#
#     meta1py runs unprivileged here (no privilege drop): the image's user is meta1 (uid 2525),
#     and the entrypoint refuses to start mcp as root.
#
# ENVIRONMENT
#     META1_CONF              the configuration file (default /etc/meta1/meta1.conf, a volume)
#     META1_RUNTIME_DIR       where paths.conf and listen.conf are written (default /run/meta1;
#                             the configuration includes them by this absolute path)
#     META1_QUEUE_DIRECTORY   default /var/spool/meta1 (a volume)
#     META1_MAIL_DIRECTORY    default /var/mail/meta1 (a volume): Maildirs <domain>/<user>/
#     META1_LISTEN_ADDRESS    default 0.0.0.0
#     META1_PORT              default 2525
#     META1_TEST              1: test mode (meta1 run reads it: captured deliveries, control API)
#     META1_TEST_LISTEN_ADDRESS  the control API's address (default 127.0.0.1: inside the
#                             container only); another address needs
#     META1_TEST_ALLOW_NON_LOOPBACK=yes  (default no): the operator's consent to serve the API on
#                             the container's network, so that a published port reaches it
#     META1_TEST_PORT         the control API's port (default 8025)
#
# EXIT STATUS
#     that of meta1 (0 after SIGTERM; see docs/mcp.md), or 64 for a bad environment variable,
#     71 when the runtime files cannot be written, 77 when started as root, 78 when the
#     configuration file is missing.
set -euo pipefail

: "${META1_CONF:=/etc/meta1/meta1.conf}"
: "${META1_RUNTIME_DIR:=/run/meta1}"
: "${META1_QUEUE_DIRECTORY:=/var/spool/meta1}"
: "${META1_MAIL_DIRECTORY:=/var/mail/meta1}"
: "${META1_LISTEN_ADDRESS:=0.0.0.0}"
: "${META1_PORT:=2525}"
: "${META1_TEST:=}"
: "${META1_TEST_LISTEN_ADDRESS:=127.0.0.1}"
: "${META1_TEST_PORT:=8025}"
: "${META1_TEST_ALLOW_NON_LOOPBACK:=no}"
export META1_CONF

CAP_NET_BIND_SERVICE=10  # linux/capability.h

# The same line format as meta1py's own log (meta1py/log.py); after exec, mcp has this pid.
say() { printf 'meta1py/entrypoint[%d]: %s: %s\n' "$$" "$1" "$2" >&2; }
die() { local status="$1"; shift; say error "$*"; exit "$status"; }

# The values end up in configuration text: accept only what cannot change its structure.
check_path() {
    case "$2" in
        /*) ;;
        *) die 64 "$1=$2: an absolute path is needed" ;;
    esac
    case "$2" in
        *[\"\\\;{}#]* | *[[:cntrl:]]*) die 64 "$1=$2: quotes, backslashes, ; { } # and control characters are not allowed" ;;
    esac
}
check_port() {
    case "$2" in
        '' | *[!0-9]* | 0*) die 64 "$1=$2: a port number from 1 to 65535 is needed" ;;
    esac
    [ "$2" -le 65535 ] || die 64 "$1=$2: a port number from 1 to 65535 is needed"
}
check_address() {
    case "$2" in
        '' | *[!0-9A-Fa-f:.]*) die 64 "$1=$2: an IPv4 or IPv6 address is needed (0.0.0.0 for all)" ;;
    esac
}

# True when CAP_NET_BIND_SERVICE is in this shell's effective set. The shell reads its own
# status (the redirection is the shell's), and meta1 keeps the set across exec: podman gives a
# non-root user the added capabilities as ambient ones.
can_bind_privileged_ports() {
    local key value
    while read -r key value; do
        if [ "$key" = "CapEff:" ]; then
            (( (16#$value >> CAP_NET_BIND_SERVICE) & 1 ))
            return
        fi
    done < /proc/$$/status
    return 1
}

# Write $1 atomically (a reader never sees half a file) from stdin.
write_file() {
    local tmp="$1.tmp.$$"
    if ! { cat > "$tmp" && mv -f "$tmp" "$1"; }; then
        rm -f "$tmp"
        die 71 "cannot write $1"
    fi
}

# Write paths.conf and listen.conf; with "verbose", log what smtps will listen on.
write_runtime_files() {
    check_path META1_RUNTIME_DIR "$META1_RUNTIME_DIR"
    check_path META1_QUEUE_DIRECTORY "$META1_QUEUE_DIRECTORY"
    check_path META1_MAIL_DIRECTORY "$META1_MAIL_DIRECTORY"
    check_address META1_LISTEN_ADDRESS "$META1_LISTEN_ADDRESS"
    check_port META1_PORT "$META1_PORT"
    if [ ! -e "$META1_CONF" ]; then
        die 78 "no configuration file $META1_CONF (is the volume mounted at $(dirname "$META1_CONF") empty?);" \
            "copy contrib/container/meta1.conf there, or use a named volume: it starts with the image's copy"
    fi
    if ! mkdir -p "$META1_RUNTIME_DIR" 2>/dev/null || [ ! -w "$META1_RUNTIME_DIR" ]; then
        die 71 "cannot write to $META1_RUNTIME_DIR as uid $(id -u): it must be a directory that uid may write"
    fi

    local test_mode="" tested=""
    if [ "$META1_TEST" = 1 ]; then
        check_address META1_TEST_LISTEN_ADDRESS "$META1_TEST_LISTEN_ADDRESS"
        check_port META1_TEST_PORT "$META1_TEST_PORT"
        case "$META1_TEST_ALLOW_NON_LOOPBACK" in
            yes | no) ;;
            *) die 64 "META1_TEST_ALLOW_NON_LOOPBACK=$META1_TEST_ALLOW_NON_LOOPBACK: yes or no" ;;
        esac
        local api="$META1_TEST_LISTEN_ADDRESS:$META1_TEST_PORT"
        case "$META1_TEST_LISTEN_ADDRESS" in
            *:*) api="[$META1_TEST_LISTEN_ADDRESS]:$META1_TEST_PORT" ;;
        esac
        # meta1 run refuses an address that is not loopback unless allow_non_loopback = yes.
        test_mode="# META1_TEST=1: the control API (META1_TEST_LISTEN_ADDRESS, META1_TEST_PORT).
test_mode { listen = $api; allow_non_loopback = $META1_TEST_ALLOW_NON_LOOPBACK; }"
        tested="; TEST MODE: control API on $api"
    fi
    write_file "$META1_RUNTIME_DIR/paths.conf" <<EOF
# Written by meta1-entrypoint at each start, from META1_QUEUE_DIRECTORY and META1_MAIL_DIRECTORY.
queue_directory = "$META1_QUEUE_DIRECTORY";
mail_directory = "$META1_MAIL_DIRECTORY";
$test_mode
EOF
    local port25="" listeners="$META1_LISTEN_ADDRESS:$META1_PORT"
    local why="no CAP_NET_BIND_SERVICE, so not on port 25"
    if can_bind_privileged_ports; then
        why="CAP_NET_BIND_SERVICE"
        if [ "$META1_PORT" != 25 ]; then
            port25="# Port 25: this process has CAP_NET_BIND_SERVICE.
listen_socket { address = $META1_LISTEN_ADDRESS; port = 25; }"
            listeners+=" and $META1_LISTEN_ADDRESS:25"
        fi
    fi
    write_file "$META1_RUNTIME_DIR/listen.conf" <<EOF
# Written by meta1-entrypoint at each start, from META1_LISTEN_ADDRESS and META1_PORT.
listen_socket { address = $META1_LISTEN_ADDRESS; port = $META1_PORT; }
$port25
EOF
    if [ "${1:-}" = verbose ]; then
        say info "uid $(id -u), $why: smtps listens on $listeners; configuration $META1_CONF$tested"
    fi
}

# The health check: connect, expect a 220 greeting, say QUIT. A wildcard address is reached
# through loopback.
healthcheck() {
    local host="$META1_LISTEN_ADDRESS"
    case "$host" in
        0.0.0.0) host=127.0.0.1 ;;
        ::) host=::1 ;;
    esac
    exec python3 - "$host" "$META1_PORT" <<'EOF'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.settimeout(5)
        greeting = sock.makefile("rb").readline(1000)
        sock.sendall(b"QUIT\r\n")
except OSError as e:
    sys.exit(f"unhealthy: {host}:{port}: {e}")
if not greeting.startswith(b"220"):
    sys.exit(f"unhealthy: {host}:{port} greeted {greeting[:200]!r}")
print(f"healthy: {greeting[:200].decode('ascii', 'replace').rstrip()}")
EOF
}

command="${1:-run}"
case "$command" in
    run)
        [ "$#" -eq 0 ] || shift
        if [ "$(id -u)" -eq 0 ]; then
            die 77 "refusing to run mcp as root in this image: start the container as its meta1 user (the default; no --user 0), and add --cap-add NET_BIND_SERVICE for port 25"
        fi
        write_runtime_files verbose
        exec meta1 run -f "$META1_CONF" "$@"
        ;;
    healthcheck)
        healthcheck
        ;;
    meta1)
        write_runtime_files
        exec "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
