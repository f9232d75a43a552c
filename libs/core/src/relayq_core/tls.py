"""gRPC TLS from the stack-wide settings: server credentials and client channels.

Servers (``relayq_core.grpc_server.start_server``) serve TLS when ``RELAYQ_TLS_CERT_FILE`` and
``RELAYQ_TLS_KEY_FILE`` are set, and require client certificates signed by
``RELAYQ_TLS_CLIENT_CA_FILE`` when that is set too (mTLS). Clients of relayq's servers open a TLS
channel when ``RELAYQ_TLS_CA_FILE`` is set, verifying the server against that CA, and present
their own ``RELAYQ_TLS_CERT_FILE``/``_KEY_FILE`` when they have them (what an mTLS server asks).
Without those settings everything stays plaintext, as on a developer's machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from relayq_core.settings import CommonSettings


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and key, and the CA its clients' certificates must chain to."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """The credentials for ``add_secure_port`` (files are read now: a bad path fails here)."""
        ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


@dataclass(frozen=True)
class ClientTls:
    """The CA a client trusts for relayq's servers, and its own certificate (for mTLS)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials (files are read now)."""
        key = cert = None
        if self.cert_file is not None and self.key_file is not None:
            key, cert = self.key_file.read_bytes(), self.cert_file.read_bytes()
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(), private_key=key, certificate_chain=cert
        )


def server_tls(settings: CommonSettings) -> ServerTls | None:
    """The server side of TLS from settings; None: serve plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return ServerTls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)


def client_tls(settings: CommonSettings) -> ClientTls | None:
    """The client side of TLS from settings; None: plaintext channels."""
    if settings.tls_ca_file is None:
        return None
    return ClientTls(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)


def channel(
    address: str, tls: ClientTls | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A blocking channel to ``address``: TLS when ``tls`` is given, plaintext otherwise."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.credentials(), options=list(options))


def aio_channel(
    address: str, tls: ClientTls | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An asyncio channel to ``address``: TLS when ``tls`` is given, plaintext otherwise."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.credentials(), options=list(options))
