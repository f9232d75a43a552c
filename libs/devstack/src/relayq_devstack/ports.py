"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_LOCAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 15000
_handed_out: set[int] = set()
_lock = threading.Lock()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could bind ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so connections lingering in TIME_WAIT do not make a port busy
        # for them; test the port the way they will use it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _candidate_range() -> range:
    """Ports below the kernel's ephemeral range.

    ``bind(0)`` would hand out an ephemeral port, which any outgoing connection may take between
    the moment we pick it and the moment the server binds it, or while a server restarts on it.
    Ports outside that range are only ever taken by servers that ask for them.
    """
    try:
        low, high = (int(x) for x in _LOCAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    if low - _LOWEST >= 2000:
        return range(_LOWEST, low)
    return range(high + 1, 65536)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now and not already handed out by this process.

    Another process may still take it before our server binds it; the servers in this package
    retry on a new port when they lose that race.
    """
    candidates = _candidate_range()
    rng = random.SystemRandom()
    with _lock:
        for _ in range(200):
            port = rng.choice(candidates)
            if port not in _handed_out and port_is_free(port, host):
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free port found in {candidates.start}-{candidates.stop - 1}")


def pick_port(preferred: int, host: str = "127.0.0.1") -> tuple[int, bool]:
    """``preferred`` if it is free, else a free port; the flag says whether it moved."""
    if port_is_free(preferred, host):
        return preferred, False
    return free_port(host), True
