"""gRPC TLS with a freshly generated self-signed certificate (the ``openssl`` CLI): dlq-svc's real
start-up in process, and relayq-ingest as a process (TLS at both doors, API keys, logs)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dlq_svc.config import DlqSettings
from dlq_svc.convert import report_from_proto
from dlq_svc.main import build_servicer, start
from ingest_svc.auth import hash_key
from relayq.v1 import dead_letter_pb2 as pb
from relayq.v1 import dead_letter_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from relayq_core.catalog import Catalog
from relayq_core.db.ledger import create_pool
from relayq_core.grpc_server import RunningServer
from relayq_core.publish import Publisher
from relayq_core.tls import ClientTls, aio_channel, channel
from relayq_devstack.ports import free_port
from relayq_devstack.process import ServiceProcess
from tests.conftest import BIN, service_env
from tests.integration.dlq_fixtures import report_request
from worker_svc.dlq_client import DlqClient

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

NO_PROXY = (("grpc.enable_http_proxy", 0),)


@dataclass(frozen=True)
class Cert:
    """A self-signed certificate (its own CA) for localhost and 127.0.0.1, and its key."""

    cert: Path
    key: Path


def make_cert(folder: Path, name: str) -> Cert:
    """openssl: an EC P-256 key and a self-signed certificate valid for a day."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", f"/CN={name}"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return Cert(cert, key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cert]:
    folder = tmp_path_factory.mktemp("tls")
    return {name: make_cert(folder, name) for name in ("server", "client", "stranger")}


@asynccontextmanager
async def dlq_over_tls(
    database_url: str, broker_url: str, catalog: Catalog, **tls: str
) -> AsyncIterator[RunningServer]:
    """dlq-svc started the way relayq-dlq starts it, with TLS settings."""
    settings = DlqSettings.model_validate({"admin_token": "tls-test-token", **tls})
    pool = await create_pool(database_url, max_size=2)
    publisher = Publisher(broker_url)
    running = await start(build_servicer(pool, publisher, settings), settings, "127.0.0.1:0")
    try:
        yield running
    finally:
        await running.stop(0)
        await pool.close()
        await publisher.close()


async def health(address: str, tls: ClientTls | None) -> grpc.StatusCode:
    """The health check's outcome from a client with ``tls`` (None: plaintext)."""
    async with aio_channel(address, tls, NO_PROXY) as ch:
        try:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


async def test_dlq_serves_tls_to_clients_that_trust_its_certificate(
    certs: dict[str, Cert], database_url: str, quiet_broker_url: str, catalog: Catalog
) -> None:
    server = certs["server"]
    async with dlq_over_tls(
        database_url,
        quiet_broker_url,
        catalog,
        RELAYQ_TLS_CERT_FILE=str(server.cert),
        RELAYQ_TLS_KEY_FILE=str(server.key),
    ) as running:
        assert running.tls
        address = f"localhost:{running.port}"
        trusted = ClientTls(server.cert)
        assert await health(address, trusted) == grpc.StatusCode.OK
        # A real call, from the worker's own DLQ client
        request = report_request(task="tls.check")
        client = DlqClient(address, 5.0, trusted)
        try:
            duplicate = await client.report(report_from_proto(request))
        finally:
            await client.close()
        assert duplicate is False
        async with aio_channel(address, trusted, NO_PROXY) as ch:
            stub = dead_letter_pb2_grpc.DeadLetterServiceStub(ch)
            reply = await stub.GetDeadLetter(pb.GetDeadLetterRequest(id=request.job_id))
        assert reply.dead_letter.task == "tls.check"
        # dlq-tool, configured by the environment like every relayq client (the runbook's
        # first commands run it with TLS on).
        tool = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "dlq-tool"), "--address", address, "list", "--task", "tls.check"],
            env={**service_env("", ""), "RELAYQ_TLS_CA_FILE": str(server.cert)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert tool.returncode == 0 and request.job_id in tool.stdout, tool.stdout + tool.stderr
        plain = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / "dlq-tool"), "--address", address, "--timeout", "3", "stats"],
            env=service_env("", ""),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert plain.returncode != 0, "a plaintext dlq-tool must not reach a TLS dlq-svc"
        # Refused: a plaintext client, and one that trusts another certificate.
        assert await health(address, None) == grpc.StatusCode.UNAVAILABLE
        assert await health(address, ClientTls(certs["stranger"].cert)) == (
            grpc.StatusCode.UNAVAILABLE
        )


async def test_mtls_refuses_clients_without_a_certificate_it_trusts(
    certs: dict[str, Cert], database_url: str, quiet_broker_url: str, catalog: Catalog
) -> None:
    server, client, stranger = certs["server"], certs["client"], certs["stranger"]
    async with dlq_over_tls(
        database_url,
        quiet_broker_url,
        catalog,
        RELAYQ_TLS_CERT_FILE=str(server.cert),
        RELAYQ_TLS_KEY_FILE=str(server.key),
        RELAYQ_TLS_CLIENT_CA_FILE=str(client.cert),
    ) as running:
        address = f"localhost:{running.port}"
        assert await health(address, ClientTls(server.cert, client.cert, client.key)) == (
            grpc.StatusCode.OK
        )
        assert await health(address, ClientTls(server.cert)) == grpc.StatusCode.UNAVAILABLE
        assert await health(address, ClientTls(server.cert, stranger.cert, stranger.key)) == (
            grpc.StatusCode.UNAVAILABLE
        )


def tls_healthy(address: str, tls: ClientTls) -> bool:
    ch = channel(address, tls, NO_PROXY)
    try:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        ch.close()


async def test_relayq_ingest_serves_tls_and_api_keys_at_both_doors(
    certs: dict[str, Cert],
    database_url: str,
    quiet_broker_url: str,
    tmp_path: Path,
) -> None:
    """The real process, configured only by the environment: TLS on gRPC and HTTP, API keys,
    and a log in which neither the key nor a redacted payload field appears."""
    server = certs["server"]
    key = "rq_live_tls_3c41e0f7aa"
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"# who may submit\nbilling:{hash_key(key)}\n")
    grpc_port, http_port = free_port(), free_port()
    log = tmp_path / "ingest.log"
    proc = ServiceProcess(
        "ingest",
        [str(BIN / "relayq-ingest")],
        log_path=log,
        env=service_env(
            database_url,
            quiet_broker_url,
            RELAYQ_INGEST_GRPC_PORT=str(grpc_port),
            RELAYQ_INGEST_HTTP_PORT=str(http_port),
            RELAYQ_TLS_CERT_FILE=str(server.cert),
            RELAYQ_TLS_KEY_FILE=str(server.key),
            RELAYQ_INGEST_API_KEYS_FILE=str(keys_file),
            RELAYQ_REDACT_FIELDS="card_number",
        ),
        inherit_env=False,
    )
    address = f"localhost:{grpc_port}"
    trusted = ClientTls(server.cert)
    try:
        await asyncio.to_thread(proc.wait_healthy, lambda: tls_healthy(address, trusted), 30)
        request = ingest_pb2.SubmitJobRequest(task="demo.echo", idempotency_key="tls-proc-1")
        request.payload.update({"card_number": "4111111111111111"})
        async with aio_channel(address, trusted, NO_PROXY) as ch:
            stub = ingest_pb2_grpc.IngestServiceStub(ch)
            reply = await stub.SubmitJob(request, metadata=(("x-api-key", key),))
            assert reply.job_id
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SubmitJob(request)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await health(address, None) == grpc.StatusCode.UNAVAILABLE

        verify = ssl.create_default_context(cafile=str(server.cert))
        async with httpx.AsyncClient(verify=verify, trust_env=False) as http:
            url = f"https://localhost:{http_port}"
            created = await http.post(
                f"{url}/v1/jobs",
                json={"task": "demo.echo", "payload": {"n": 1}},
                headers={"X-API-Key": key},
            )
            assert created.status_code == 201, created.text
            refused = await http.post(f"{url}/v1/jobs", json={"task": "demo.echo"})
            assert refused.status_code == 401
            assert (await http.get(f"{url}/healthz")).status_code == 200
        async with httpx.AsyncClient(trust_env=False) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://localhost:{http_port}/healthz")
    finally:
        await asyncio.to_thread(proc.stop, 10)
    text = log.read_text()
    assert '"event": "ingest_started"' in text and '"tls": true' in text
    assert '"client": "billing"' in text
    assert key not in text and "4111111111111111" not in text
