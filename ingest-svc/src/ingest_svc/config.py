"""ingest-svc settings: the only place this service reads its environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from relayq_core.settings import DEFAULT_MAX_MESSAGE_BYTES, CommonSettings


class IngestSettings(CommonSettings):
    """``RELAYQ_INGEST_*`` plus the stack-wide ``RELAYQ_*`` values."""

    model_config = SettingsConfigDict(env_prefix="RELAYQ_INGEST_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address both servers bind to")
    grpc_port: int = Field(50051, ge=0, le=65535)
    http_port: int = Field(8000, ge=0, le=65535)
    max_payload_bytes: int = Field(256 * 1024, gt=0, description="Largest payload, as JSON")
    max_payload_depth: int = Field(32, gt=0, description="Deepest nesting of the payload")
    max_batch: int = Field(1000, gt=0, description="Most jobs in one SubmitJobs call")
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        gt=0,
        description="Largest request either door accepts (gRPC message, HTTP body)",
    )
    db_pool_size: int = Field(10, gt=0)
    outbox_max_jobs: int = Field(
        20_000,
        gt=0,
        description="Accepted jobs waiting for the broker beyond which the oldest are left to "
        "the reconciler (memory bound while Redis is down)",
    )
    outbox_max_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="The same bound, in bytes of encoded messages"
    )
    outbox_max_age_seconds: float = Field(
        60.0,
        gt=0,
        description="A job not published after this long is left to the reconciler; keep it at "
        "or below RELAYQ_RECONCILER_UNPUBLISHED_AFTER_SECONDS",
    )
    publish_batch: int = Field(
        1000, gt=0, le=10_000, description="Most messages in one pipelined push to Redis"
    )
    publish_timeout_seconds: float = Field(
        5.0, gt=0, description="A push Redis has not answered by then counts as failed"
    )
    publish_retry_max_seconds: float = Field(
        5.0, gt=0, description="Longest wait between pushes while Redis fails (capped backoff)"
    )
    shutdown_publish_seconds: float = Field(
        5.0,
        ge=0,
        description="On SIGTERM, how long to keep publishing what waits; the rest is the "
        "reconciler's",
    )
    enqueue_mark_interval_seconds: float = Field(
        0.05,
        gt=0,
        le=5,
        description="How often the jobs published since are marked enqueued, in one statement",
    )
    grace_seconds: float = Field(5.0, ge=0, description="In-flight RPCs get this long on SIGTERM")
    api_keys_file: Path | None = Field(
        None, description="client_name:sha256hex lines; set (or api_keys): callers need a key"
    )
    api_keys: str = Field("", description="Comma-separated client_name:sha256hex entries")

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value
