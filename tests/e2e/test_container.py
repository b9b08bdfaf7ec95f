"""The container image (contrib/container): its entrypoint without an engine, then the image itself.

The first tests run ``contrib/container/entrypoint.sh`` as a plain process, the way the image
runs it: as root they start it as ``nobody`` (the image's user is uid 2525, unprivileged), with
its environment variables pointing the configuration, the queue and the Maildirs at a temporary
directory and the port at a free loopback port.

``test_container_image`` builds and runs the real image with rootful podman: it makes the base
image with mmdebstrap unless ``localhost/meta1py-base:bookworm`` exists, builds
``localhost/meta1py:e2e`` from contrib/container/Containerfile, publishes ports 2525 and 25 on
free loopback ports, sends mail in through both, reads the Maildir from the bind-mounted mail
volume, runs the health check and stops the container with ``podman stop`` (SIGTERM). It skips,
saying why, when podman, runc, mmdebstrap or root is missing, when the engine cannot run a
container here, or when a build cannot reach Debian's mirror or PyPI. The container is removed by
id; the two images stay, as a cache for the next run (``podman rmi localhost/meta1py:e2e
localhost/meta1py-base:bookworm`` removes them; ``podman image prune`` removes the untagged
images that builds of older trees left behind).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from meta1py_testing.daemon import DaemonError, free_port, poll

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CONTAINER_DIR = ROOT / "contrib" / "container"
ENTRYPOINT = CONTAINER_DIR / "entrypoint.sh"
IMAGE_CONF = CONTAINER_DIR / "meta1.conf"
VENV_BIN = Path(sys.executable).parent

NOBODY = 65534
IMAGE_UID = 2525
CAP_NET_BIND_SERVICE = 10
READY_S = 60.0
STOP_S = 30.0
DELIVERY_S = 30.0


def _has_cap_net_bind_service() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool((int(line.split()[1], 16) >> CAP_NET_BIND_SERVICE) & 1)
    return False


def _maildir_files(mail_directory: Path, user: str = "alice", domain: str = "localhost") -> list[Path]:
    new = mail_directory / domain / user / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def _send(port: int, subject: str) -> None:
    message = f"From: me@localhost\r\nTo: alice@localhost\r\nSubject: {subject}\r\n\r\n{subject}\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail("me@localhost", ["alice@localhost"], message.encode())


def _delivered(mail_directory: Path, subjects: list[str]) -> None:
    """Wait until every subject has arrived in alice's Maildir."""

    def arrived() -> bool:
        texts = [path.read_bytes() for path in _maildir_files(mail_directory)]
        return all(any(f"Subject: {s}".encode() in text for text in texts) for s in subjects)

    poll(arrived, DELIVERY_S, f"{subjects} in {mail_directory}/localhost/alice/new")


# ------------------------------------------------------------------------------------------------
# The entrypoint without an engine


@dataclass
class EntrypointDirs:
    """A configuration, runtime, queue and mail directory for one entrypoint, and its environment."""

    base: Path
    env: dict[str, str]
    port: int

    @property
    def runtime(self) -> Path:
        return Path(self.env["META1_RUNTIME_DIR"])

    @property
    def mail(self) -> Path:
        return Path(self.env["META1_MAIL_DIRECTORY"])


@dataclass(frozen=True)
class RunAs:
    """Popen's user, group and extra_groups: nobody when we are root, else ourselves (all None)."""

    user: int | None
    group: int | None
    extra_groups: list[int] | None


def _unprivileged() -> RunAs:
    return RunAs(NOBODY, NOBODY, []) if os.geteuid() == 0 else RunAs(None, None, None)


@pytest.fixture
def entrypoint_dirs() -> Iterator[EntrypointDirs]:
    if not (VENV_BIN / "meta1").exists():
        pytest.skip(f"no meta1 command next to {sys.executable} (run scripts/install.sh)")
    if os.geteuid() == 0:
        who = _unprivileged()
        probe = subprocess.run(
            [sys.executable, "-c", "import meta1py.mcp.main"],
            capture_output=True,
            text=True,
            user=who.user,
            group=who.group,
            extra_groups=who.extra_groups,
        )
        if probe.returncode != 0:
            pytest.skip(
                f"nobody cannot run {sys.executable} (scripts/test.sh grants o+x): {probe.stderr[-300:]}"
            )
    # Not pytest's tmp_path: its parents are mode 0700, and nobody must reach this directory.
    base = Path(tempfile.mkdtemp(prefix="meta1-entrypoint-"))
    base.chmod(0o755)
    runtime = base / "run"
    conf = base / "etc" / "meta1.conf"
    conf.parent.mkdir()
    # The image's configuration, with its includes pointing at this test's runtime directory.
    text, count = re.subn(r'"/run/meta1/', f'"{runtime}/', IMAGE_CONF.read_text())
    assert count == 2, f"{IMAGE_CONF} should include /run/meta1/paths.conf and /run/meta1/listen.conf"
    conf.write_text(text)
    if os.geteuid() == 0:
        for path in (base, conf.parent, conf):
            os.chown(path, NOBODY, NOBODY)
    port = free_port()
    env = {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "META1_CONF": str(conf),
        "META1_RUNTIME_DIR": str(runtime),
        "META1_QUEUE_DIRECTORY": str(base / "queue"),
        "META1_MAIL_DIRECTORY": str(base / "mail"),
        "META1_LISTEN_ADDRESS": "127.0.0.1",
        "META1_PORT": str(port),
    }
    try:
        yield EntrypointDirs(base, env, port)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _healthcheck(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), "healthcheck"], env=dict(env), capture_output=True, text=True, timeout=30
    )


def test_entrypoint_runs_mcp_delivers_and_stops_on_sigterm(entrypoint_dirs: EntrypointDirs) -> None:
    dirs = entrypoint_dirs
    log_path = dirs.base / "entrypoint.log"
    who = _unprivileged()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(ENTRYPOINT)],  # no argument: "run", the image's CMD
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dirs.env,
            cwd=dirs.base,
            user=who.user,
            group=who.group,
            extra_groups=who.extra_groups,
        )

    def log() -> str:
        return log_path.read_text(errors="replace")

    try:

        def healthy() -> subprocess.CompletedProcess[str] | None:
            if process.poll() is not None:
                raise DaemonError(f"the entrypoint exited with {process.returncode}\n{log()}")
            result = _healthcheck(dirs.env)
            return result if result.returncode == 0 else None

        health = poll(healthy, READY_S, "the health check to pass")
        assert health.stdout.startswith("healthy: 220 "), health.stdout
        # Unprivileged and without CAP_NET_BIND_SERVICE: no port 25.
        listen = (dirs.runtime / "listen.conf").read_text()
        assert f"port = {dirs.port};" in listen
        assert ("port = 25;" in listen) == (os.geteuid() != 0 and _has_cap_net_bind_service()), listen
        assert (
            f'queue_directory = "{dirs.env["META1_QUEUE_DIRECTORY"]}";'
            in (dirs.runtime / "paths.conf").read_text()
        )

        _send(dirs.port, "entrypoint without an engine")
        _delivered(dirs.mail, ["entrypoint without an engine"])

        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {STOP_S:g}s after SIGTERM\n{log()}") from None
        assert status == 0, log()
        # One pid from the entrypoint's first line to mcp's last: the shell exec'd meta1.
        pid = process.pid
        text = log()
        assert f"meta1py/entrypoint[{pid}]: info: uid " in text, text
        assert f"meta1py/mcp[{pid}]: info: stopping workers" in text, text
        assert re.search(rf"meta1py/mcp\[{pid}\]: info: stopped$", text, re.MULTILINE), text
        assert _healthcheck(dirs.env).returncode != 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_entrypoint_adds_port_25_only_with_cap_net_bind_service(entrypoint_dirs: EntrypointDirs) -> None:
    """The decision and the configuration it writes, checked by ``meta1 check-config`` (no bind)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip(
            "needs root and setpriv (util-linux) to start the entrypoint with and without the capability"
        )
    user = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    with_cap = ["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
    listen = entrypoint_dirs.runtime / "listen.conf"
    for extra, want_25 in (([], False), (with_cap, True)):
        result = subprocess.run(
            [*user, *extra, str(ENTRYPOINT), "meta1", "check-config"],
            env=entrypoint_dirs.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        text = listen.read_text()
        assert f"address = 127.0.0.1; port = {entrypoint_dirs.port};" in text
        assert ("address = 127.0.0.1; port = 25;" in text) == want_25, text


@pytest.mark.parametrize(
    ("name", "value", "status", "message"),
    [
        ("META1_PORT", "70000", 64, "a port number from 1 to 65535 is needed"),
        ("META1_QUEUE_DIRECTORY", "var/queue", 64, "an absolute path is needed"),
        ("META1_MAIL_DIRECTORY", '/var/mail/"x', 64, "quotes, backslashes"),
        ("META1_LISTEN_ADDRESS", "0.0.0.0; }", 64, "an IPv4 or IPv6 address is needed"),
        ("META1_CONF", "/nonexistent/meta1.conf", 78, "no configuration file /nonexistent/meta1.conf"),
    ],
)
def test_entrypoint_rejects_a_bad_environment(
    entrypoint_dirs: EntrypointDirs, name: str, value: str, status: int, message: str
) -> None:
    env = {**entrypoint_dirs.env, name: value}
    result = subprocess.run(
        [str(ENTRYPOINT), "meta1", "check-config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == status, result.stderr
    assert message in result.stderr
    assert not (entrypoint_dirs.runtime / "listen.conf").exists()


def test_entrypoint_refuses_to_run_mcp_as_root(entrypoint_dirs: EntrypointDirs) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    result = subprocess.run(
        [str(ENTRYPOINT), "run"], env=entrypoint_dirs.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 77
    assert "refusing to run mcp as root" in result.stderr


# ------------------------------------------------------------------------------------------------
# The image, with podman

BASE_IMAGE = "localhost/meta1py-base:bookworm"
IMAGE = "localhost/meta1py:e2e"
# contrib/container/README.md gives the same command.
MMDEBSTRAP = [
    "mmdebstrap",
    "--variant=minbase",
    "--include=python3,python3-venv",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "bookworm",
]
# What this machine's setup needs (no systemd, cgroups v1): a private file, not /etc's.
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_S = 900.0
# A build that failed on one of these failed for want of a network, not because of the image.
NETWORK_FAILURES = (
    "CERTIFICATE_VERIFY_FAILED",
    "Could not fetch URL",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "No matching distribution found",
)


class Podman:
    """Run podman with the private containers.conf."""

    def __init__(self, conf_dir: Path) -> None:
        conf = conf_dir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.timings: dict[str, float] = {}

    def run(
        self, *args: str, timeout: float = 120.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr[-3000:]}"
            )
        return result

    def timed(self, what: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        start = time.monotonic()
        result = self.run(*args, timeout=timeout)
        self.timings[what] = time.monotonic() - start
        return result


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _network_failure(output: str) -> str | None:
    for line in output.splitlines():
        if any(marker in line for marker in NETWORK_FAILURES):
            return line.strip()
    return None


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    """A podman that can build and run containers here, with the base image; skip otherwise."""
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (scripts/test.sh installs them as root)")
    if os.geteuid() != 0:
        pytest.skip("needs rootful podman: the volumes are host directories owned by the image's uid 2525")
    engine = Podman(tmp_path_factory.mktemp("podman"))
    info = engine.run("info")
    if info.returncode != 0:
        pytest.skip(f"podman cannot run here: {_tail(info.stderr, 3)}")
    if engine.run("image", "exists", BASE_IMAGE).returncode != 0:
        if shutil.which("mmdebstrap") is None:
            pytest.skip(f"no {BASE_IMAGE} image and no mmdebstrap to make it")
        rootfs = tmp_path_factory.mktemp("base") / "rootfs.tar"
        start = time.monotonic()
        made = subprocess.run([*MMDEBSTRAP, str(rootfs)], capture_output=True, text=True, timeout=BUILD_S)
        engine.timings["base image (mmdebstrap)"] = time.monotonic() - start
        if made.returncode != 0:
            rootfs.unlink(missing_ok=True)
            pytest.skip(
                f"mmdebstrap could not make the base image (no Debian mirror?): {_tail(made.stderr, 3)}"
            )
        imported = engine.timed("base image (import)", "import", str(rootfs), BASE_IMAGE, timeout=BUILD_S)
        rootfs.unlink()
        if imported.returncode != 0:
            pytest.skip(f"podman import failed: {_tail(imported.stderr, 3)}")
    # A container with a published port: runc, cgroups and netavark (with iptables) all work.
    smoke = engine.run("run", "--rm", "--publish", f"127.0.0.1:{free_port()}:2525", BASE_IMAGE, "true")
    if smoke.returncode != 0:
        pytest.skip(f"podman cannot run a container with a published port here: {_tail(smoke.stderr, 3)}")
    return engine


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    """``localhost/meta1py:e2e`` built from this tree (cached layers make a rebuild quick)."""
    args = [
        "build",
        "--format",
        "docker",  # keeps HEALTHCHECK
        "--file",
        str(CONTAINER_DIR / "Containerfile"),
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "--tag",
        IMAGE,
    ]
    if CA_BUNDLE.is_file():
        # The host's CAs for pip: a TLS-intercepting proxy works, and no CA lands in the image.
        args += ["--secret", f"id=cacert,src={CA_BUNDLE}"]
    built = podman.timed("image build", *args, str(ROOT), timeout=BUILD_S)
    output = built.stdout + built.stderr
    if built.returncode != 0:
        network = _network_failure(output)
        if network is not None:
            pytest.skip(f"the image build could not download its Python packages: {network}")
        raise AssertionError(f"podman build failed (exit {built.returncode}):\n{_tail(output, 40)}")
    return IMAGE


def start_container(
    podman: Podman, image: str, base: Path, *options: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """``podman run --detach`` of ``image`` with ``base``'s etc (read-only), queue and mail
    directories as its volumes (queue and mail made here, owned by the image's user) and the
    test's own ``options``; podman's answer, and the container to remove: its id, or its
    (random) name if podman failed before it printed the id."""
    queue, mail = base / "queue", base / "mail"
    for path, mode in ((queue, 0o750), (mail, 0o700)):
        path.mkdir(mode=mode)
        os.chown(path, IMAGE_UID, IMAGE_UID)
    name = f"meta1py-e2e-{secrets.token_hex(4)}"
    started = podman.run(
        "run",
        "--detach",
        "--name",
        name,
        # No systemd timer for the health check here: a test runs it with "healthcheck run".
        "--health-interval",
        "disable",
        *options,
        "--volume",
        f"{base / 'etc'}:/etc/meta1:ro",
        "--volume",
        f"{queue}:/var/spool/meta1",
        "--volume",
        f"{mail}:/var/mail/meta1",
        image,
    )
    return started, started.stdout.strip() or name


def test_container_image(podman: Podman, image: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="meta1-container-"))
    base.chmod(0o755)
    conf_dir, mail = base / "etc", base / "mail"
    conf_dir.mkdir()
    shutil.copy(IMAGE_CONF, conf_dir / "meta1.conf")
    smtp_port, port_25 = free_port(), free_port()
    started, container = start_container(
        podman,
        image,
        base,
        "--cap-add",
        "NET_BIND_SERVICE",
        "--publish",
        f"127.0.0.1:{smtp_port}:2525",
        "--publish",
        f"127.0.0.1:{port_25}:25",
    )
    try:
        assert started.returncode == 0, started.stderr

        def logs() -> str:
            result = podman.run("logs", container)
            return result.stdout + result.stderr

        def healthy() -> bool:
            state = podman.run("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
            if state != "running":
                raise DaemonError(f"the container is {state}\n{logs()}")
            return podman.run("healthcheck", "run", container).returncode == 0

        start = time.monotonic()
        poll(healthy, READY_S, "the container's health check to pass")
        podman.timings["container healthy"] = time.monotonic() - start
        health = podman.run("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()
        assert health == "healthy"

        # Non-root, with CAP_NET_BIND_SERVICE from --cap-add; pid 1 is mcp (the entrypoint exec'd it).
        status = podman.run("exec", container, "cat", "/proc/1/status", check=True).stdout
        assert re.search(rf"^Uid:\s+{IMAGE_UID}\s+{IMAGE_UID}\s", status, re.MULTILINE), status
        cap_eff = re.search(r"^CapEff:\s+(\w+)", status, re.MULTILINE)
        assert cap_eff is not None and (int(cap_eff.group(1), 16) >> CAP_NET_BIND_SERVICE) & 1, status
        text = logs()
        assert "meta1py/entrypoint[1]: info: uid 2525, CAP_NET_BIND_SERVICE" in text, text
        assert "meta1py/mcp[1]: info: listening on 0.0.0.0:25" in text, text

        _send(smtp_port, "through port 2525")
        _send(port_25, "through port 25")
        _delivered(mail, ["through port 2525", "through port 25"])
        assert all(path.stat().st_uid == IMAGE_UID for path in _maildir_files(mail))

        start = time.monotonic()
        podman.run("stop", "--time", str(int(STOP_S)), container, timeout=STOP_S + 30, check=True)
        podman.timings["podman stop"] = time.monotonic() - start
        state = podman.run(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container, check=True
        ).stdout.split()
        text = logs()
        assert state == ["exited", "0"], text
        assert "meta1py/mcp[1]: info: SIGTERM: shutting down" in text, text
        assert "meta1py/mcp[1]: info: stopping workers" in text, text
        assert re.search(r"meta1py/mcp\[1\]: info: stopped$", text, re.MULTILINE), text
        print("container timings:", {k: round(v, 1) for k, v in podman.timings.items()})
    finally:
        podman.run("rm", "--force", "--ignore", "--volumes", "--time", "0", container)
        shutil.rmtree(base, ignore_errors=True)


BLACKBOX = ROOT / "tests" / "blackbox"


def test_the_blackbox_suite_passes_against_the_image(podman: Podman, image: str) -> None:
    """tests/blackbox (SMTP and HTTP only) against the image in test mode (``META1_TEST=1``).

    Host networking, so that clients keep their loopback addresses (the suite trusts 127.0.0.1
    and greylists 127.0.0.2; through a published port both would come from the gateway); the
    SMTP port and the control API listen on free loopback ports.
    """
    base = Path(tempfile.mkdtemp(prefix="meta1-container-bb-"))
    base.chmod(0o755)
    conf_dir = base / "etc"
    conf_dir.mkdir()
    (conf_dir / "meta1.conf").write_text(
        (BLACKBOX / "meta1.conf.in")
        .read_text()
        .format(
            paths='include "/run/meta1/paths.conf";',  # with META1_TEST=1, test_mode { listen } too
            listen='include "/run/meta1/listen.conf";',
            test_mode="",
            qmgr_user="",
            smar_user="",
            smtpc_user="",
            smtps_user="",
        )
    )
    smtp_port, api_port = free_port(), free_port()
    started, container = start_container(
        podman,
        image,
        base,
        "--network",
        "host",
        "--env",
        "META1_TEST=1",
        "--env",
        "META1_LISTEN_ADDRESS=127.0.0.1",
        "--env",
        f"META1_PORT={smtp_port}",
        "--env",
        f"META1_TEST_PORT={api_port}",
    )
    try:
        assert started.returncode == 0, started.stderr

        def logs() -> str:
            result = podman.run("logs", container)
            return result.stdout + result.stderr

        def greets() -> bool:
            state = podman.run("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
            if state != "running":
                raise DaemonError(f"the container is {state}\n{logs()}")
            try:
                with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as client:
                    return client.noop()[0] == 250
            except OSError:
                return False

        poll(greets, READY_S, "the container's greeting")
        env = {k: v for k, v in os.environ.items() if not k.startswith("META1_")}
        env.update(
            META1_BLACKBOX_SMTP=f"127.0.0.1:{smtp_port}", META1_BLACKBOX_API=f"http://127.0.0.1:{api_port}"
        )
        suite = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--rootdir",
                str(ROOT),
                str(BLACKBOX),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert suite.returncode == 0, f"{_tail(suite.stdout, 40)}\n{_tail(logs(), 40)}"
        summary = suite.stdout.strip().splitlines()[-1]
        assert re.search(r"\d+ passed", summary) and "skipped" not in summary, suite.stdout
        assert "TEST MODE" in logs()
    finally:
        podman.run("rm", "--force", "--ignore", "--volumes", "--time", "0", container)
        shutil.rmtree(base, ignore_errors=True)
