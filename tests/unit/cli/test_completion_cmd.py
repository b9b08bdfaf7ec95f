"""``meta1 completion bash``: the script, run by a real bash."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from meta1py.cli.completion import main, script


def complete(tmp_path: Path, *words: str) -> list[str]:
    """What bash completes for the command line ``words`` (the last word being completed)."""
    path = tmp_path / "meta1-completion"
    path.write_text(script())
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {path}\nCOMP_WORDS=({line})\nCOMP_CWORD={len(words) - 1}\n"
        '_meta1\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    return sorted(line for line in done.stdout.splitlines() if line)


pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def test_subcommands_queue_actions_and_flags(tmp_path: Path) -> None:
    assert {"queue", "config", "explain", "makemap", "grey"} <= set(complete(tmp_path, "meta1", ""))
    assert complete(tmp_path, "meta1", "que") == ["queue"]
    assert complete(tmp_path, "meta1", "queue", "re") == ["release", "requeue"]
    assert complete(tmp_path, "meta1", "queue", "show", "--b") == ["--body"]
    assert complete(tmp_path, "meta1", "map", "query", "ac") == ["access"]


def test_file_names_after_f(tmp_path: Path) -> None:
    (tmp_path / "meta1.conf").write_text("")
    assert complete(tmp_path, "meta1", "check-config", "-f", f"{tmp_path}/meta1.c") == [
        f"{tmp_path}/meta1.conf"
    ]


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zsh"]) == 64
    assert main(["--help"]) == 0
    assert main(["bash"]) == 0 and "complete -F _meta1 meta1" in capsys.readouterr().out
