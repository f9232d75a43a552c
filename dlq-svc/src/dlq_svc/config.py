"""dlq-svc settings: the only place this service reads its environment."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from relayq_core.settings import CommonSettings


class DlqSettings(CommonSettings):
    """``RELAYQ_DLQ_*`` plus the stack-wide ``RELAYQ_*`` values."""

    model_config = SettingsConfigDict(env_prefix="RELAYQ_DLQ_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to")
    grpc_port: int = Field(50052, ge=0, le=65535)
    db_pool_size: int = Field(5, gt=0)
    grace_seconds: float = Field(5.0, ge=0)
