"""Throw-away local users for tests of command, file and ``.forward`` deliveries (as root).

``local_user(home_parent)`` makes a user with a home directory below ``home_parent`` (mode 0755,
owned by the user), yields its passwd entry and removes the account afterwards; the home
directory goes with ``home_parent``, which the test owns. ``public_directory()`` is a temporary
directory other users can reach (for their homes, and for files their commands leave).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def local_user(home_parent: Path, prefix: str = "m1u") -> Iterator[pwd.struct_passwd]:
    """As root: a user (and its group) with a home directory in ``home_parent``.

    Raises:
        PermissionError: not root.
    """
    if os.geteuid() != 0:
        raise PermissionError("local_user needs root")
    name = f"{prefix}{secrets.token_hex(4)}"
    home = home_parent / name
    subprocess.run(["groupadd", name], check=True)
    try:
        subprocess.run(
            [
                "useradd",
                "--no-create-home",
                "--home-dir",
                str(home),
                "--shell",
                "/bin/sh",
                "--gid",
                name,
                name,
            ],
            check=True,
        )
        try:
            account = pwd.getpwnam(name)
            home.mkdir(mode=0o755)
            os.chown(home, account.pw_uid, account.pw_gid)
            home.chmod(0o755)
            yield account
        finally:
            subprocess.run(["userdel", name], check=False)
    finally:
        subprocess.run(["groupdel", name], check=False, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def public_directory(prefix: str = "meta1-local-") -> Iterator[Path]:
    """A fresh directory in the system's temporary directory, mode 0755 (any user may pass
    through it; pytest's own ``tmp_path`` is closed to other users), removed afterwards.

    Make a subdirectory of mode 1777 in it where commands running as other users write.
    """
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        directory.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
