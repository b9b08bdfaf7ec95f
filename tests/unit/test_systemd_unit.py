"""contrib/systemd/meta1.service: systemd accepts it, and it keeps the promises of issue 13.

``systemd-analyze verify`` checks the unit as systemd would load it (unknown keys, bad values,
unknown system call groups, a command that is not executable) and reports problems as output lines
(with exit status 0 for most of them), so the test asserts that no line mentions the unit. On a
machine where ``meta1 setup --sendmail`` has not linked ``/usr/local/sbin/meta1`` (a test machine),
verify complains only that this command is not executable; the test then verifies a temporary copy
whose ``ExecStart=`` runs the ``meta1`` next to this interpreter (``sys.executable``'s bin
directory) instead, and that copy must be clean. The test is skipped when systemd-analyze is
missing.

The other tests parse the unit and compare it with the code it describes (mcp's stop deadline and
hard-failure statuses, the system calls the workers' privilege drop needs).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meta1py.contract import HARD_FAILURE_STATUSES, WORKER_NAMES
from meta1py.mcp.supervise import STOP_TIMEOUT_S

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "meta1.service"
INSTALLED_COMMAND = "/usr/local/sbin/meta1"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value assigned, in order (an empty assignment clears the list).

    Enough of systemd.syntax(7) for our file: ``[Section]``, ``Key=value``, ``#``/``;`` comments,
    backslash continuation lines.
    """
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def _one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= should be set once, found {values}"
    return values[0]


def _words(service: dict[str, list[str]], key: str) -> list[str]:
    return [word for value in service.get(key, []) for word in value.split()]


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze") or (
        "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None
    )
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return found


def _verify(analyze: str, unit: Path) -> list[str]:
    """``systemd-analyze verify`` output lines that are about ``unit``."""
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    about = [line for line in lines if unit.name in line or str(unit) in line]
    if result.returncode != 0 and not about:
        # A failure that names no file (say, the unit could not be loaded at all) is ours too.
        about = lines or [f"systemd-analyze verify exited {result.returncode}"]
    return about


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    problems = _verify(analyze, UNIT)
    not_installed = f"Command {INSTALLED_COMMAND} is not executable"
    if problems and all(not_installed in line for line in problems):
        # A test machine: run the same unit on this checkout's meta1 instead.
        meta1 = Path(sys.executable).parent / "meta1"
        if not meta1.exists():
            pytest.skip(f"{INSTALLED_COMMAND} and {meta1} are both missing; cannot verify ExecStart")
        text = UNIT.read_text()
        copy_text = re.sub(
            rf"^ExecStart={re.escape(INSTALLED_COMMAND)} ", f"ExecStart={meta1} ", text, flags=re.M
        )
        assert copy_text != text, "ExecStart= does not run /usr/local/sbin/meta1"
        copy = tmp_path / UNIT.name
        copy.write_text(copy_text)
        problems = _verify(analyze, copy)
    assert problems == []


def test_type_notify_with_reload_and_mixed_kill(service: dict[str, list[str]]) -> None:
    assert _one(service, "Type") == "notify"
    # mcp is the only process that notifies; workers never get NOTIFY_SOCKET.
    assert _one(service, "NotifyAccess") == "main"
    assert _one(service, "ExecStart") == f"{INSTALLED_COMMAND} run -f /etc/meta1/meta1.conf"
    assert _one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    # mcp stops its workers itself, in order; systemd SIGTERMs only mcp.
    assert _one(service, "KillMode") == "mixed"


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)\s*(s|sec|min)?", value)
    assert match, f"unexpected time span {value!r}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_stop_timeout_covers_mcp_stop_deadline(service: dict[str, list[str]]) -> None:
    # mcp stops the workers one after another, SIGKILLing each after STOP_TIMEOUT_S: systemd
    # must not SIGKILL everything before mcp's own deadline has passed.
    worst_case_s = len(WORKER_NAMES) * STOP_TIMEOUT_S
    assert _seconds(_one(service, "TimeoutStopSec")) > worst_case_s


def test_no_restart_on_a_hard_failure(service: dict[str, list[str]]) -> None:
    assert _one(service, "Restart") == "on-failure"
    prevented = {int(word) for word in _words(service, "RestartPreventExitStatus")}
    assert prevented >= HARD_FAILURE_STATUSES  # 64 usage, 77 privileges, 78 configuration


def test_hardening_options_present(service: dict[str, list[str]]) -> None:
    assert _one(service, "NoNewPrivileges") == "yes"
    assert _one(service, "ProtectSystem") == "strict"
    assert _one(service, "PrivateTmp") == "yes"
    assert _one(service, "ProtectHome") == "yes"
    for key in ("ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups", "LockPersonality"):
        assert _one(service, key) == "yes", key
    assert _one(service, "SystemCallArchitectures") == "native"
    assert set(_words(service, "RestrictAddressFamilies")) >= {"AF_UNIX", "AF_INET", "AF_INET6"}
    # The queue and mail directories stay writable under ProtectSystem=strict.
    writable = {word.lstrip("-") for word in _words(service, "ReadWritePaths")}
    assert writable >= {"/var/spool/meta1", "/var/mail/meta1"}
    assert _one(service, "RuntimeDirectory") == "meta1"


def test_capabilities_are_what_mcp_needs(service: dict[str, list[str]]) -> None:
    caps = set(_words(service, "CapabilityBoundingSet"))
    assert caps == {
        "CAP_NET_BIND_SERVICE",  # port 25
        "CAP_SETUID",  # workers drop privileges
        "CAP_SETGID",
        "CAP_CHOWN",  # directories and RPC sockets owned by the workers
        "CAP_FOWNER",
        "CAP_FSETID",  # setgid content directories
        "CAP_DAC_OVERRIDE",
        "CAP_KILL",  # signals to workers running as other users
    }


def _syscall_group(analyze: str, group: str) -> set[str]:
    """The system calls in ``group`` (nested groups expanded) per ``systemd-analyze syscall-filter``."""
    result = subprocess.run(
        [analyze, "syscall-filter", "--no-pager", group],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    calls: set[str] = set()
    for line in result.stdout.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        calls |= _syscall_group(analyze, word) if word.startswith("@") else {word}
    return calls


def test_system_call_filter_keeps_setuid(service: dict[str, list[str]]) -> None:
    filters = service.get("SystemCallFilter", [])
    assert filters and filters[0].split() == ["@system-service"], filters
    denied = [word.lstrip("~") for value in filters if value.startswith("~") for word in value.split()]
    # @privileged contains @setuid and @chown, which the privilege drop and mcp need.
    assert not {"@setuid", "@privileged", "@chown", "@process", "@signal"} & set(denied), denied
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    allowed = _syscall_group(analyze, "@system-service")
    for group in denied:
        allowed -= _syscall_group(analyze, group) if group.startswith("@") else {group}
    needed = {
        "setgroups",
        "setresgid",
        "setresuid",
        "chown",
        "fchown",
        "chmod",
        "kill",
        "prctl",
        "memfd_create",
    }
    assert needed <= allowed, sorted(needed - allowed)
