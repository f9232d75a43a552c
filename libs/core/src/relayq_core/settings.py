"""Settings shared by every relayq process.

Each service has one ``config.py`` with a pydantic-settings class under its own env prefix
(``RELAYQ_INGEST_``, ``RELAYQ_WORKER_`` ...) that extends :class:`CommonSettings`. The few
values the whole fleet shares (database, broker, logging, task catalogue) keep their stack-wide
names (``RELAYQ_DATABASE_URL``, ``RELAYQ_REDIS_URL`` ...), so one ``.relayq/stack.env``
configures every process. Nothing outside the ``config.py`` modules reads ``os.environ``.

The default data files (the task catalogue, the retry policies) ship inside this package
(``relayq_core/defaults/``), so an installed wheel (the Docker image) finds them as an editable
checkout does; ``RELAYQ_CATALOG`` and ``RELAYQ_RETRY_POLICY`` point at other files.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Self

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relayq_core.redaction import field_names

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/relayq"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: The largest gRPC request a server accepts unless its settings say otherwise.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: A process's span file is rotated at this size (one old file kept: twice this on disk).
DEFAULT_TRACES_MAX_BYTES = 16 * 1024 * 1024


def repo_root() -> Path:
    """The source checkout this package runs from: for tests and dev tools only. An installed
    package has no checkout, so a service must never find its files through this."""
    return Path(__file__).resolve().parents[4]


def packaged_default(name: str) -> Path:
    """The default data file ``name`` shipped in ``relayq_core/defaults/`` (``tasks.toml``,
    ``retry.toml``), wherever the package is installed."""
    resource = files("relayq_core").joinpath("defaults", name)
    # Wheels install as plain files; a zipped install would need importlib.resources.as_file.
    if not isinstance(resource, Path):
        raise RuntimeError(f"relayq_core is not installed as files: cannot read {resource}")
    return resource


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
        default_factory=lambda: packaged_default("tasks.toml"),
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
    traces_dir: Path | None = Field(
        None,
        validation_alias="RELAYQ_TRACES_DIR",
        description="Also write finished spans here as OTLP JSON lines, one file per process "
        "(relayq-trace reads them); unset: no files",
    )
    traces_max_bytes: int = Field(
        DEFAULT_TRACES_MAX_BYTES,
        gt=0,
        validation_alias="RELAYQ_TRACES_MAX_BYTES",
        description="A process's span file is rotated (one old file kept) at this size",
    )
    tls_cert_file: Path | None = Field(
        None,
        validation_alias="RELAYQ_TLS_CERT_FILE",
        description="PEM certificate (chain) of this process's gRPC server; with the key: TLS on",
    )
    tls_key_file: Path | None = Field(
        None, validation_alias="RELAYQ_TLS_KEY_FILE", description="PEM private key of that cert"
    )
    tls_client_ca_file: Path | None = Field(
        None,
        validation_alias="RELAYQ_TLS_CLIENT_CA_FILE",
        description="PEM CA bundle: servers then require client certificates it signed (mTLS)",
    )
    tls_ca_file: Path | None = Field(
        None,
        validation_alias="RELAYQ_TLS_CA_FILE",
        description="PEM CA bundle clients verify relayq's gRPC servers with; set: TLS channels",
    )
    redact_fields: str = Field(
        "",
        validation_alias="RELAYQ_REDACT_FIELDS",
        description="Payload fields masked in logs and the DLQ's display, e.g. card_number,cvv",
    )

    @field_validator(
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "tls_ca_file",
        "traces_dir",
        mode="before",
    )
    @classmethod
    def _empty_path_is_unset(cls, value: Any) -> Any:
        # An empty variable (compose's `VAR=`) means "not configured", never the current folder.
        return None if value == "" else value

    @model_validator(mode="after")
    def _tls_is_complete(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "set RELAYQ_TLS_CERT_FILE and RELAYQ_TLS_KEY_FILE together, or neither"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "RELAYQ_TLS_CLIENT_CA_FILE (mTLS) needs RELAYQ_TLS_CERT_FILE and _KEY_FILE"
            )
        return self

    @property
    def redact_field_names(self) -> frozenset[str]:
        """``redact_fields`` as lower-cased names."""
        return field_names(self.redact_fields)
