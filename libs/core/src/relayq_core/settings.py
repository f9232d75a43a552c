"""Settings shared by every relayq process.

Each service has one ``config.py`` with a pydantic-settings class under its own env prefix
(``RELAYQ_INGEST_``, ``RELAYQ_WORKER_`` ...) that extends :class:`CommonSettings`. The few
values the whole fleet shares (database, broker, logging, task catalogue) keep their stack-wide
names (``RELAYQ_DATABASE_URL``, ``RELAYQ_REDIS_URL`` ...), so one ``.relayq/stack.env``
configures every process. Nothing outside the ``config.py`` modules reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/relayq"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def repo_root() -> Path:
    """The source checkout this package runs from (editable installs, the local stack, tests)."""
    return Path(__file__).resolve().parents[4]


class CommonSettings(BaseSettings):
    """Fields every service has; subclasses set their own ``env_prefix`` and add fields."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: str = Field(
        DEFAULT_DATABASE_URL, validation_alias="RELAYQ_DATABASE_URL", description="PostgreSQL DSN"
    )
    redis_url: str = Field(
        DEFAULT_REDIS_URL, validation_alias="RELAYQ_REDIS_URL", description="Redis broker URL"
    )
    log_level: str = Field("info", validation_alias="RELAYQ_LOG_LEVEL")
    log_json: bool = Field(
        True, validation_alias="RELAYQ_LOG_JSON", description="false: human console rendering"
    )
    catalog_path: Path = Field(
        default_factory=lambda: repo_root() / "config" / "tasks.toml",
        validation_alias="RELAYQ_CATALOG",
        description="The task catalogue (TOML): task names, queues, retry policies",
    )
    otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        description="Where spans are exported (standard OTEL variables); unset: not exported",
    )
