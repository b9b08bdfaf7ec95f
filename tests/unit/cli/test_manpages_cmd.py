"""``meta1 manpages``: the manual pages from docs/, checked by the real groff."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from meta1py.cli.manpages import convert, docs_directory, main


def test_markdown_subset_to_roff() -> None:
    page = convert(
        "# t\n\nText with `-f FILE` and **bold**, a [link](x.md).\n\n"
        "| option | default |\n|---|---|\n| `a` | 1 |\n\n- one\n- two\n\n```\n.dot line\n```\n",
        "x",
        1,
        "what x is",
        "2026-12-03",
    )
    assert page.startswith('.TH "X" "1" "2026-12-03" "meta1py" "meta1py manual"\n.SH NAME\nx \\- what x is\n')
    assert "Text with \\fB\\-f FILE\\fR and \\fBbold\\fR, a link." in page
    assert ".TP\n\\fBa\\fR\ndefault: 1" in page
    assert ".IP \\(bu 2\none" in page
    assert "\\&.dot line" in page  # a line starting with a dot is text, not a request


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_every_page_renders_without_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert docs_directory() is not None
    assert main([str(tmp_path)]) == 0
    pages = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    assert pages == ["man1/meta1-queue.1", "man1/sendmail.1", "man5/meta1.conf.5", "man8/meta1.8"]
    for page in tmp_path.rglob("*.*"):
        done = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True, timeout=60
        )
        assert (done.returncode, done.stderr) == (0, ""), page
    rendered = subprocess.run(
        ["groff", "-man", "-Tutf8", "-P-cbou", str(tmp_path / "man5" / "meta1.conf.5")],
        capture_output=True,
        timeout=60,
    ).stdout.decode()
    assert "queue_directory" in rendered and "DNS_timeout" in rendered
