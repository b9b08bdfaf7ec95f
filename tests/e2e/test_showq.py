"""mailq for every local user (issue 20): an ordinary user lists the queue through qmgr's showq
socket, as Postfix's showq lets them, unless ``authorized_mailq_users`` leaves them out.

As root, against the daemon in production mode; the user is ``nobody``. The queue directory is
searchable by others once the submission group exists (``meta1 setup --sendmail`` makes it; the
test makes a throw-away group of its own).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from test_queue_life import make_routed_daemon, message, submit
from test_sendmail_compat import sendmail

from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.peers import SinkScript, recording_sink

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture
def submission_group() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: other users, and a group for the queue directory")
    group = f"m1q{secrets.token_hex(3)}"
    subprocess.run(["groupadd", "--system", group], check=True)
    try:
        yield group
    finally:
        subprocess.run(["groupdel", group], check=False, stderr=subprocess.DEVNULL)


def queue_list(daemon: Meta1Daemon, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """``meta1 queue list -f CONF ARGS`` (as ``user`` when given)."""
    command = [sys.executable, "-m", "meta1py", "queue", "list", "-f", str(daemon.conf_path), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("META1_")}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=daemon.dir, env=env, user=user
    )


def test_an_ordinary_user_lists_the_queue_through_showq(
    make_daemon: Callable[..., Meta1Daemon], submission_group: str
) -> None:
    with recording_sink(script=SinkScript(data_temp_failures=10**6)) as sink:
        daemon = make_routed_daemon(
            make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"}, qmgr="retry_min = 1h;"
        )
        daemon.conf_path.write_text(daemon.conf_path.read_text() + f"setgid_group = {submission_group};\n")
        daemon.start()
        qid = submit(daemon, "ana@localhost", ["x@example.net"], message("waits"))
        poll(lambda: "451" in queue_list(daemon).stdout, 60, "the first deferral")
        as_root = queue_list(daemon)
        # nobody cannot read the envelope store: qmgr answers, with the same text.
        as_nobody = queue_list(daemon, user="nobody")
        assert as_nobody.returncode == 0, as_nobody.stderr
        assert as_nobody.stdout == as_root.stdout and qid in as_nobody.stdout
        mailq = sendmail(daemon, "-bp", user="nobody")
        assert mailq.returncode == 0 and mailq.stdout.decode() == as_root.stdout
        listed = queue_list(daemon, "--json", user="nobody").stdout.splitlines()
        [entry] = [json.loads(line) for line in listed]
        assert (entry["queue_id"], entry["queue_name"], entry["sender"]) == (qid, "deferred", "ana@localhost")
        # The filters read the store: they stay root's and the queue owner's.
        filtered = queue_list(daemon, "--deferred", user="nobody")
        assert filtered.returncode == 77 and "the filters need root" in filtered.stderr
        # The daemon is down: the user is told so; root still reads the queue directly.
        assert daemon.stop() == 0
        down = queue_list(daemon, user="nobody")
        assert down.returncode == 69 and "the mail system is down" in down.stderr
        assert qid in queue_list(daemon).stdout


def test_authorized_mailq_users_keeps_others_out(
    make_daemon: Callable[..., Meta1Daemon], submission_group: str
) -> None:
    daemon = make_daemon(f"setgid_group = {submission_group};\nauthorized_mailq_users = {{ }};\n")
    with daemon:
        refused = queue_list(daemon, user="nobody")
        assert refused.returncode == 77, refused
        assert "you may not list the queue (authorized_mailq_users)" in refused.stderr
        daemon.wait_for_log(rf"showq: uid {pwd_uid('nobody')} may not list the queue")
        assert queue_list(daemon).stdout == "Mail queue is empty\n"


def pwd_uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid
