"""``stack.env``: dotenv lines that tell every client where the local stack listens."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BARE = re.compile(r"^[A-Za-z0-9_./:@%+,=?&-]*$")


def _quote(value: str) -> str:
    if _BARE.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _unquote(raw: str) -> str:
    raw = raw.strip()
    if raw.startswith('"'):
        out: list[str] = []
        chars = iter(raw[1:])
        for ch in chars:
            if ch == '"':
                break
            if ch == "\\":
                nxt = next(chars, "")
                out.append("\n" if nxt == "n" else nxt)
            else:
                out.append(ch)
        return "".join(out)
    if raw.startswith("'"):
        return raw[1:].split("'", 1)[0]
    # Bare values end at an inline comment, as in other dotenv readers.
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def format_env(values: Mapping[str, str], *, header: str | None = None) -> str:
    """Dotenv text for ``values``, in their order, quoted only where needed."""
    lines = [f"# {line}" for line in (header or "").splitlines()]
    for key, value in values.items():
        if not _KEY.match(key):
            raise ValueError(f"invalid variable name: {key!r}")
        lines.append(f"{key}={_quote(value)}")
    return "\n".join(lines) + "\n"


def parse_env(text: str) -> dict[str, str]:
    """Variables from dotenv text (``KEY=value``, quotes, ``export``, comments)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, raw = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise ValueError(f"not a KEY=value line: {line!r}")
        values[key] = _unquote(raw)
    return values


def write_env(path: Path, values: Mapping[str, str], *, header: str | None = None) -> None:
    """Writes ``values`` to ``path`` atomically (readers never see a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(format_env(values, header=header))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; it holds addresses, no secrets
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_env(path: Path) -> dict[str, str]:
    """The variables of a dotenv file."""
    return parse_env(path.read_text(encoding="utf-8"))
