"""Which configuration file a ``meta1`` command uses."""

from __future__ import annotations

import os

DEFAULT_PATH = "/etc/meta1/meta1.conf"


def config_file(option: str | None = None) -> str | None:
    """The file to load: ``-f FILE``, else ``$META1_CONF``, else /etc/meta1/meta1.conf if it exists.

    None means the built-in defaults (a working unprivileged MTA on 127.0.0.1:2525).
    """
    if option:
        return option
    env = os.environ.get("META1_CONF")
    if env:
        return env
    return DEFAULT_PATH if os.path.exists(DEFAULT_PATH) else None
