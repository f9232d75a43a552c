"""py-spy profiles of the stack's busiest processes during a saturating run, reduced to their hot
spots.

``py-spy record --format raw`` writes one line per distinct stack (``frame;frame;... count``)
with the thread as the root frame (``--threads``). From that we count, per process:

- *self*: the share of active samples whose innermost frame is the function (where the CPU is);
- *total*: the share of active samples with the function anywhere on the stack (what it costs,
  callees included);
- *by package*: self samples grouped by the innermost frame's top-level module.

Only samples of a thread holding the GIL are kept (``--gil``): a thread blocked in a socket
call has released it, so what remains is where the Python process spends CPU, not where it
waits. Percentages are of those samples; ``busy`` is their count over what one always-busy
thread would give, about the share of a core the process's Python code used.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayq_load.bench.stack import BIN

RATE = 100
_PLUMBING = ("(threading.py)", "(concurrent/futures/", "(click/", "(<frozen", "(runpy.py)")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")


@dataclass(frozen=True)
class Target:
    """A process to profile."""

    role: str
    pid: int


def _package(file: str) -> str:
    path = file.split("site-packages/")[-1].split("python3.12/")[-1]
    first = path.split("/")[0]
    return first.removesuffix(".py") or "?"


def _label(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['func']} ({match['file']})"


def analyse(text: str, seconds: float, rate: int = RATE, top: int = 15) -> dict[str, Any]:
    """Hot spots from py-spy's raw output (see the module docstring)."""
    self_count: Counter[str] = Counter()
    total_count: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith(("thread (", "process ")):
            threads[frames[0]] += count
            frames = frames[1:]
        while frames and frames[0].startswith(("thread (", "process ")):
            frames = frames[1:]
        if not frames:
            continue
        samples += count
        leaf = _label(frames[-1])
        self_count[leaf] += count
        match = _FRAME.match(frames[-1].strip())
        packages[_package(match["file"]) if match else "?"] += count
        for label in {_label(f) for f in frames}:
            total_count[label] += count
    n = max(samples, 1)
    # Entry points and thread plumbing are on (nearly) every stack: they say nothing.
    for label in list(total_count):
        if total_count[label] >= 0.9 * n or any(p in label for p in _PLUMBING):
            del total_count[label]

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"name": k, "pct": 100.0 * v / n} for k, v in counter.most_common(top)]

    return {
        "samples": samples,
        "busy": samples / max(seconds * rate, 1),
        "threads": shares(threads),
        "self": shares(self_count),
        "total": shares(total_count),
        "packages": shares(packages),
    }


async def profile(targets: list[Target], seconds: int, out_dir: Path) -> dict[str, Any]:
    """Records every target for ``seconds`` at once; their hot spots by role."""
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for target in targets:
        path = out_dir / f"{target.role}.txt"
        argv = [
            str(BIN / "py-spy"),
            "record",
            "--pid",
            str(target.pid),
            "--duration",
            str(seconds),
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--nolineno",
            "--threads",
            "--gil",
            "--nonblocking",
            "--output",
            str(path),
        ]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        procs.append((target, path, proc))
    results: dict[str, Any] = {}
    for target, path, proc in procs:
        _, err = await proc.communicate()
        if proc.returncode != 0 or not path.exists():
            results[target.role] = {"error": err.decode(errors="replace")[-500:]}
            continue
        results[target.role] = {
            "pid": target.pid,
            "seconds": seconds,
            **analyse(path.read_text(encoding="utf-8"), seconds),
        }
    return results
