"""Server configuration: flags, ``AETHER_*`` environment variables, defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServerSettings"]


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AETHER_", extra="ignore")

    data_dir: Path = Path("aether-data")
    host: str = "127.0.0.1"
    port: int = 7070
    public_url: str | None = None
    state_url: str | None = Field(default=None, description="default sqlite:///DATA/state.db")
    records_url: str | None = Field(default=None, description="default sqlite:///DATA/records.db")
    lease_ttl: float = Field(default=3.0, gt=0.2, le=120)
    reconcile_interval: float = Field(default=1.0, gt=0)
    max_artifact_bytes: int = 2 << 30
    retain_deployments: int = Field(default=10, ge=1, description="artifacts kept per app")
    gc_grace_seconds: float = Field(default=3600.0, ge=0)
    gc_interval: float = Field(default=600.0, gt=0)
    queue_url: str | None = Field(
        default=None, description="redis://... for the Redis task queue; default: the records DB"
    )
    task_lease: float = Field(default=15.0, ge=2.0, description="seconds a task claim lasts")
    disabled_features: list[str] = Field(
        default_factory=list,
        description="node features the server never turns on, e.g. [\"criu\"] (handshake policy)",
    )
    telemetry_interval: float = Field(
        default=1.0, ge=0.1, le=60.0, description="seconds between a node's metrics pushes"
    )
    max_concurrent_uploads: int = Field(default=32, ge=1, le=10_000)
    log_retention_bytes: int = 10 << 20

    def resolved_state_url(self) -> str:
        return self.state_url or f"sqlite:///{self.data_dir.resolve() / 'state.db'}"

    def resolved_records_url(self) -> str:
        return self.records_url or f"sqlite:///{self.data_dir.resolve() / 'records.db'}"

    def api_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
