"""The dlq-tool section of docs/dlq.md matches the tool: every command is documented, and every
command line it shows parses."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime

from dlq_svc.tool.args import parse_args
from dlq_svc.tool.commands import COMMANDS
from relayq_core.settings import repo_root

DOC = repo_root() / "docs" / "dlq.md"


def section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("\n## dlq-tool\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def command_lines() -> list[str]:
    lines = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", section(), re.M | re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("dlq-tool "):
                lines.append(line.split(" | ")[0].split(" < ")[0])
    return lines


def test_every_command_is_documented() -> None:
    text = section()
    for name in COMMANDS:
        assert f"| `{name}" in text, name


def test_every_example_parses() -> None:
    examples = command_lines()
    assert len(examples) >= 8
    now = datetime.now(UTC)
    for example in examples:
        argv = shlex.split(example)[1:]
        ns = parse_args(argv, now)  # exits 2 (failing the test) on a stale example
        assert ns.command in COMMANDS, example
