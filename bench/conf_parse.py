"""Benchmark: parse time of etc/meta1.conf and of a generated 5,000-line config.

Run: .venv/bin/python bench/conf_parse.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from meta1py.conf import parse_config
from meta1py.conf.parser import _lark

ROOT = Path(__file__).resolve().parents[1]


def generated(lines: int) -> str:
    """A valid config of about ``lines`` lines: many named smtps sections, each 10 lines."""
    out = ["hostname = bench.example;", "local_domains = { a.example, b.example };"]
    n = 0
    while len(out) < lines - 10:
        out += [
            f"smtps s{n} {{",
            f"  listen_socket {{ address = 127.0.0.1; port = {1024 + n}; }}",
            "  max_recipients = 100;   # a comment",
            "  max_message_size = 20M;",
            "  IO_timeout = 5m3s;",
            '  relay_clients = { 10.0.0.0/8, 192.0.2.0/24, "::1" };',
            "  flags = { no_pipelining, dont_request_cert, vrfy };",
            "  session_timeout = 1h;",
            "  log_level = debug;",
            "}",
        ]
        n += 1
    return "\n".join(out) + "\n"


def measure(text: str, name: str, rounds: int) -> None:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        parse_config(text, name)
        times.append(time.perf_counter() - t0)
    lines = text.count("\n")
    print(
        f"{name}: {lines} lines, median {statistics.median(times) * 1000:.1f} ms, "
        f"min {min(times) * 1000:.1f} ms over {rounds} runs"
    )


def main() -> None:
    t0 = time.perf_counter()
    _lark()
    print(f"grammar load + LALR table build (once per process): {(time.perf_counter() - t0) * 1000:.1f} ms")
    sample = ROOT / "etc" / "meta1.conf"
    measure(sample.read_text(), str(sample.relative_to(ROOT)), 50)
    measure(generated(5000), "generated-5000-lines", 5)


if __name__ == "__main__":
    main()
