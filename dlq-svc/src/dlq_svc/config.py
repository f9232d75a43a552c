"""dlq-svc settings: the only place this service reads its environment."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from relayq_core.settings import DEFAULT_MAX_MESSAGE_BYTES, CommonSettings


class DlqSettings(CommonSettings):
    """``RELAYQ_DLQ_*`` plus the stack-wide ``RELAYQ_*`` values."""

    model_config = SettingsConfigDict(env_prefix="RELAYQ_DLQ_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to")
    grpc_port: int = Field(50052, ge=0, le=65535)
    db_pool_size: int = Field(5, gt=0)
    metrics_port: int = Field(
        9101, ge=0, le=65535, description="/metrics port (on by default); 0: no metrics"
    )
    metrics_host: str = Field("127.0.0.1")
    grace_seconds: float = Field(5.0, ge=0, description="In-flight RPCs get this long on SIGTERM")
    admin_token: SecretStr | None = Field(
        None,
        description="Replay/Drop/Purge need `authorization: Bearer <token>`; unset or empty: "
        "no check (a warning is logged at start-up)",
    )
    trace_url_template: str = Field(
        "",
        description="Link to a trace, with {trace_id}, e.g. http://localhost:16686/trace/{trace_id}",
    )
    max_ids: int = Field(10_000, gt=0, description="Most ids one Replay or Drop call may name")
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        gt=0,
        description="Largest request accepted (so an oversized id list gets a clear refusal)",
    )

    @property
    def admin_token_value(self) -> str:
        """The token, or "" when auth is off."""
        return self.admin_token.get_secret_value() if self.admin_token else ""
