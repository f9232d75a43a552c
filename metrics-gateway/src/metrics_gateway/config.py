"""metrics-gateway settings: the only place this service reads its environment."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from relayq_core.settings import CommonSettings


class GatewaySettings(CommonSettings):
    """``RELAYQ_METRICS_*`` plus the stack-wide ``RELAYQ_*`` values."""

    model_config = SettingsConfigDict(env_prefix="RELAYQ_METRICS_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1")
    port: int = Field(9100, ge=0, le=65535)
    dlq_grpc: str = Field(
        "127.0.0.1:50052", validation_alias="RELAYQ_DLQ_GRPC", description="dlq-svc address"
    )
    source_timeout_seconds: float = Field(
        2.0, gt=0, description="Longest a scrape waits for one source"
    )
    expected_workers: int = Field(
        0,
        ge=0,
        validation_alias="RELAYQ_EXPECTED_WORKERS",
        description="Worker nodes the deployment should run (relayq_workers_expected, read by "
        "WorkersBelowExpected); 0: no expectation, the alert stays quiet",
    )
