"""Where dlq-tool connects and who it says it is.

The address comes from ``--address``, else ``$RELAYQ_DLQ_GRPC``, else the ``.relayq/stack.env``
that ``relayq-stack up`` writes (found by walking up from the working directory), else
``127.0.0.1:50052``. The admin token comes from ``$RELAYQ_DLQ_ADMIN_TOKEN``, else from that
stack.env, but only when the address is the local stack's: the local token is never sent
to another server. TLS, as every relayq client: ``$RELAYQ_TLS_CA_FILE`` set (here, or in that
stack.env for its address) opens a TLS channel verified against it, with
``$RELAYQ_TLS_CERT_FILE`` and ``$RELAYQ_TLS_KEY_FILE`` as the client certificate (mTLS).
"""

from __future__ import annotations

import getpass
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ADDRESS = "127.0.0.1:50052"
ADDRESS_VAR = "RELAYQ_DLQ_GRPC"
TOKEN_VAR = "RELAYQ_DLQ_ADMIN_TOKEN"
STACK_ENV = Path(".relayq") / "stack.env"
TLS_CA_VAR = "RELAYQ_TLS_CA_FILE"
TLS_CERT_VAR = "RELAYQ_TLS_CERT_FILE"
TLS_KEY_VAR = "RELAYQ_TLS_KEY_FILE"

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Target:
    """A dlq-svc endpoint and the credentials dlq-tool presents to it."""

    address: str
    # Kept out of repr so that no traceback or debug print can show it.
    token: str | None = field(repr=False)
    actor: str
    # Where the address came from, for error messages ("--address", "$RELAYQ_DLQ_GRPC", ...).
    source: str
    #: TLS: the CA to verify dlq-svc against (None: plaintext), and a client certificate.
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


def find_stack_env(start: Path) -> Path | None:
    """The nearest ``.relayq/stack.env`` in ``start`` or one of its parents."""
    for folder in (start, *start.parents):
        candidate = folder / STACK_ENV
        if candidate.is_file():
            return candidate
    return None


def _unquote(raw: str) -> str:
    raw = raw.strip()
    if raw[:1] == '"':
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
    if raw[:1] == "'":
        return raw[1:].split("'", 1)[0]
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def parse_env(text: str) -> dict[str, str]:
    """``KEY=value`` lines of a dotenv file (quotes, ``export`` and comments allowed).

    Lines that are not assignments are skipped: a hand-edited file should not stop the tool.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, raw = line.removeprefix("export ").partition("=")
        key = key.strip()
        if sep and _KEY.match(key):
            values[key] = _unquote(raw)
    return values


def read_stack_env(path: Path | None) -> dict[str, str]:
    """The variables of a stack.env, or nothing when there is none or it cannot be read."""
    if path is None:
        return {}
    try:
        return parse_env(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}


def default_actor() -> str:
    """``user@hostname``: who acted, for the DLQ's audit trail."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    host = socket.gethostname() or "unknown"
    # gRPC metadata values are ASCII.
    return f"{user}@{host}".encode("ascii", "replace").decode("ascii")


def resolve_target(
    address: str | None,
    environ: Mapping[str, str],
    cwd: Path,
    actor: str,
) -> Target:
    """The endpoint to call, from the flag, the environment, the local stack, or the default."""
    stack_path = find_stack_env(cwd)
    stack = read_stack_env(stack_path)
    stack_address = stack.get(ADDRESS_VAR) or None
    if address:
        resolved, source = address, "--address"
    elif environ.get(ADDRESS_VAR):
        resolved, source = environ[ADDRESS_VAR], f"${ADDRESS_VAR}"
    elif stack_address:
        resolved, source = stack_address, str(stack_path)
    else:
        resolved, source = DEFAULT_ADDRESS, "default"
    token = environ.get(TOKEN_VAR) or None
    if token is None and stack_address is not None and resolved == stack_address:
        token = stack.get(TOKEN_VAR) or None

    local = stack_address is not None and resolved == stack_address

    def tls_path(name: str) -> Path | None:
        # The stack's files only for the stack's address, as its token.
        value = environ.get(name) or (stack.get(name) if local else "") or ""
        return Path(value) if value else None

    return Target(
        address=resolved,
        token=token,
        actor=actor,
        source=source,
        tls_ca_file=tls_path(TLS_CA_VAR),
        tls_cert_file=tls_path(TLS_CERT_VAR),
        tls_key_file=tls_path(TLS_KEY_VAR),
    )
