"""A ledger that takes no writes (a failover that landed on a read-only replica, a database set
read-only by hand) is an outage of ingest's dependency, not a fault of the request: the submit
answers UNAVAILABLE (callers retry with the same key), and ingest logs each job it turned away,
with its ids, for the runbook's *Ingest refusing submits* section. Before, it answered UNKNOWN
with no line naming the jobs."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from relayq.v1 import ingest_pb2
from relayq_core.catalog import Catalog
from relayq_core.db.ledger import connect
from relayq_devstack.postgres import PostgresServer
from tests.conftest import ingest_server
from tests.integration.dlq_fixtures import fresh_database

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_a_read_only_ledger_refuses_submits_as_unavailable_naming_each_job(
    postgres: PostgresServer,
    quiet_broker_url: str,
    catalog: Catalog,
    capfd: pytest.CaptureFixture[str],
) -> None:
    url = await fresh_database(postgres)
    database = url.rsplit("/", 1)[1].split("?")[0]
    admin = await connect(url)
    try:
        async with ingest_server(url, quiet_broker_url, catalog) as ingest:
            payload = struct_pb2.Struct()
            payload.update({"n": 1})
            ok = await ingest.stub.SubmitJob(
                ingest_pb2.SubmitJobRequest(task="demo.echo", payload=payload, job_id="ro-before")
            )
            assert ok.job_id == "ro-before"
            await admin.execute(
                f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'
            )
            # New sessions are read-only: make ingest's pool open new ones (a failover would).
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            codes = []
            details: list[str] = []
            for n in range(6):
                try:
                    await ingest.stub.SubmitJob(
                        ingest_pb2.SubmitJobRequest(
                            task="demo.echo", payload=payload, job_id=f"ro-{n}"
                        ),
                        timeout=10,
                    )
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code())
                    details.append(err.details() or "")
            assert codes[-1] == grpc.StatusCode.UNAVAILABLE, (codes, details)
            assert "ReadOnlySQLTransactionError" in details[-1], details
            assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}, codes
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        await admin.close()
    out = capfd.readouterr().out
    refused = [line for line in out.splitlines() if "job_refused" in line and "UNAVAILABLE" in line]
    for n in range(len(codes)):
        assert any(f"ro-{n}" in line for line in refused), (n, refused)
