"""Generic test machinery shared by every test directory.

- ``@pytest.mark.root``: the test needs root; it is skipped otherwise.
- ``@pytest.mark.deadline(seconds)``: the absolute time limit of a trio test (default
  :data:`DEFAULT_TRIO_DEADLINE_S`), applied with ``trio.fail_after`` around the test body; on
  expiry the test fails with ``TimeoutError`` instead of hanging the suite. Tests that use
  ``autojump_clock``/``mock_clock`` get no limit (it would be measured in virtual time).
- ``free_port`` fixture: a function returning a free TCP port on a loopback address.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from meta1py_testing.peers import free_port as _free_port

#: Real seconds a trio test may run when it does not say otherwise. Generous: CI machines are small.
DEFAULT_TRIO_DEADLINE_S = 120.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "deadline(seconds): absolute real-time limit for a trio test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    skip_root = pytest.mark.skip(reason="needs root")
    for item in items:
        if item.get_closest_marker("root") is not None and not is_root:
            item.add_marker(skip_root)
        func = getattr(item, "obj", None)
        if not inspect.iscoroutinefunction(func):
            continue
        if _VIRTUAL_CLOCKS & set(getattr(item, "fixturenames", ())):
            # Under a mock clock a deadline would be virtual time; such tests cannot hang on
            # real time anyway, only deadlock, which trio reports by itself.
            continue
        marker = item.get_closest_marker("deadline")
        limit_s = float(marker.args[0]) if marker is not None else DEFAULT_TRIO_DEADLINE_S
        item.obj = _with_deadline(func, limit_s)  # type: ignore[attr-defined]


_VIRTUAL_CLOCKS = {"autojump_clock", "mock_clock"}


def _with_deadline(func: Callable[..., Awaitable[Any]], limit_s: float) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with trio.fail_after(limit_s):
                return await func(*args, **kwargs)
        except trio.TooSlowError:
            raise TimeoutError(f"trio test exceeded its {limit_s:g} s deadline") from None

    return wrapper


@pytest.fixture
def free_port() -> Callable[..., int]:
    """A function ``free_port(address='127.0.0.1') -> int`` returning a currently free TCP port."""
    return _free_port


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs file systems for disk-full tests (root only; skips otherwise).

    ``mount_tmpfs("size=256k")`` returns a fresh mount point; everything mounted is unmounted at
    the end of the test.
    """
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, check=False
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount tmpfs: {result.stderr.decode(errors='replace').strip()}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", str(point)], check=False)
