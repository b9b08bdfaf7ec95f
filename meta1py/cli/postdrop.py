"""Offline submission: write a message into the pickup directory, directly or through
``meta1-postdrop``, the setgid helper that lets every local user do it (Postfix's postdrop).

``meta1 sendmail`` calls :func:`drop` when smtps cannot take a message (the MTA is stopped, or
answers 4xx). Who may write ``queue_directory/pickup`` (``meta1q:<setgid_group> 1730``) writes
the file itself: root, the queue's owner, and the invoking user when meta1py runs unprivileged
(every path is then that user's). Everybody else runs the helper, a small C program that
``meta1 setup --sendmail`` compiles from ``postdrop.c`` beside this module and installs as
``root:<setgid_group> 2755`` at :data:`POSTDROP_PATH`. Linux ignores the setgid bit of scripts,
so the helper cannot be Python; it is small enough to read in one sitting, and its privilege is
only the submission group's: creating files in pickup directories. docs/internals.md ("Offline
submission") says why this design, and what it does not protect against.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from meta1py.queue.pickup import (
    PickupEnvelope,
    PickupFormatError,
    encode_envelope,
    pickup_directory,
    write_pickup_file,
)

#: Where ``meta1 setup --sendmail`` installs the helper (below ``--destdir``).
POSTDROP_PATH = "/usr/local/libexec/meta1/postdrop"
#: Overrides :data:`POSTDROP_PATH` (packages that install elsewhere; tests with ``--destdir``).
#: Safe to take from the environment: the helper's privilege is its own, not its caller's.
POSTDROP_ENV = "META1_POSTDROP"
#: setgid, never setuid; owner root so that no worker can replace it.
HELPER_MODE = 0o2755
_HELPER_TIMEOUT_S = 300.0


class DropError(Exception):
    """The message could not be written into the pickup directory; the text says why."""


def postdrop_program() -> Path:
    """The helper this command runs: ``$META1_POSTDROP``, else :data:`POSTDROP_PATH`."""
    return Path(os.environ.get(POSTDROP_ENV) or POSTDROP_PATH)


def may_write(directory: Path) -> bool:
    """True when this process may create files in ``directory`` without the helper."""
    return directory.is_dir() and os.access(directory, os.W_OK | os.X_OK)


def drop(queue_directory: Path, envelope: PickupEnvelope, content: bytes) -> str:
    """Write one message into the pickup directory; return the file's name once it is durable.

    Raises:
        DropError: it could not be written (the text names the directory or the helper, and why).
    """
    directory = pickup_directory(queue_directory)
    try:
        header = encode_envelope(envelope)
    except PickupFormatError as exc:
        raise DropError(str(exc)) from None
    if may_write(directory):
        try:
            return write_pickup_file(directory, [header, content])
        except OSError as exc:
            raise DropError(f"cannot write into {directory}: {exc.strerror or exc}") from None
    try:
        os.stat(directory.parent)
    except FileNotFoundError:
        raise DropError(
            f"{directory.parent} does not exist (meta1 has never run with this configuration)"
        ) from None
    except OSError:
        pass  # not ours to look into: the helper may still reach it
    program = postdrop_program()
    if not os.access(program, os.X_OK):
        raise DropError(
            f"this user may not write into {directory}, and there is no {program} to do it "
            "(meta1 setup --sendmail installs it)"
        )
    try:
        result = subprocess.run(
            [str(program), str(directory)],
            input=header + content,
            capture_output=True,
            env={},
            timeout=_HELPER_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DropError(f"{program}: {exc}") from None
    if result.returncode != 0:
        text = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
        raise DropError(text)
    return result.stdout.decode(errors="replace").strip()


# -- building the helper (meta1 setup --sendmail) ----------------------------------------------


def helper_source() -> bytes:
    """The C source of ``meta1-postdrop``."""
    return resources.files("meta1py.cli").joinpath("postdrop.c").read_bytes()


def helper_id(max_file_bytes: int) -> str:
    """What identifies a build: the source's digest and the size cap compiled in."""
    digest = hashlib.sha256(helper_source()).hexdigest()[:16]
    return f"src={digest} max={max_file_bytes}"


def helper_is_current(path: Path, gid: int, max_file_bytes: int) -> bool:
    """True when ``path`` is this version of the helper, built with this cap, owned and moded right."""
    try:
        st = path.lstat()
        data = path.read_bytes() if st.st_size < 4 * 1024 * 1024 else b""
    except OSError:
        return False
    marker = f"meta1-postdrop-id {helper_id(max_file_bytes)}\0".encode()
    return (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, gid, HELPER_MODE) and marker in data


def c_compiler() -> str | None:
    """The C compiler ``meta1 setup`` uses (``$CC``, ``cc``, ``gcc``), or None."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build_helper(target: Path, gid: int, max_file_bytes: int) -> None:
    """Compile ``meta1-postdrop`` and install it at ``target`` as ``root:gid 2755`` (as root).

    Raises:
        OSError: no compiler, the compiler failed, or the file could not be installed.
    """
    compiler = c_compiler()
    if compiler is None:
        raise OSError("no C compiler (cc): install gcc and libc6-dev")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="meta1-postdrop-") as work:
        source = Path(work) / "postdrop.c"
        source.write_bytes(helper_source())
        output = target.with_name(f".{target.name}.meta1-setup")
        command = [
            compiler,
            "-O2",
            "-Wall",
            "-D_FORTIFY_SOURCE=2",
            "-fstack-protector-strong",
            "-fPIE",
            "-pie",
            "-Wl,-z,relro,-z,now",
            f"-DMAX_FILE_BYTES={max_file_bytes}LL",
            f'-DPOSTDROP_ID="{helper_id(max_file_bytes)}"',
            "-o",
            str(output),
            str(source),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise OSError(f"{' '.join(command)}: {result.stderr.strip() or f'exit {result.returncode}'}")
    try:
        # chown first: changing the owner clears the setgid bit.
        os.chown(output, 0, gid)
        os.chmod(output, HELPER_MODE)
        os.replace(output, target)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
