"""What an app says about itself in ``aether.toml``."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from aether.errors import BadRequestError
from aether.model.decisions import AutoscaleSpec

__all__ = [
    "APP_NAME_RE",
    "ENV_NAME_RE",
    "SLICE_PATH_RE",
    "AppSecrets",
    "AppSpec",
    "CheckpointSpec",
    "Resources",
    "RolloutSpec",
    "Runtime",
    "validate_app_name",
    "validate_secret_file",
]

Runtime = Literal["node", "python", "static", "command", "slice"]

APP_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: a slice's import path, ``module:attribute`` (``shop.catalog:Catalog``)
SLICE_PATH_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)

#: an environment variable a secret may fill: upper-case letters, digits and ``_``
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
#: the name of a tenant's secret (as model.secrets.SECRET_NAME_PATTERN)
_SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def validate_secret_file(path: str) -> str:
    """A secret file's path: relative, inside the app's tree, without ``..``."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or ".." in parts or "\x00" in path:
        raise ValueError(
            f"secret file {path!r} must be a relative path inside the app, without '..'"
        )
    return PurePosixPath(*parts).as_posix()


def validate_app_name(name: str) -> str:
    if not APP_NAME_RE.match(name):
        raise BadRequestError(
            f"invalid app name {name!r}: use 1-63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


class Resources(BaseModel):
    """What one instance reserves on its node."""

    model_config = ConfigDict(extra="forbid")

    cpu: Annotated[float, Field(ge=0, le=4096)] = 0.1
    memory_mb: Annotated[int, Field(ge=0, le=1 << 30)] = 64


class RolloutSpec(BaseModel):
    """How a new deployment replaces the running one (``[rollout]`` in aether.toml)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["rolling", "canary", "blue-green"] = "rolling"
    max_parallel: Annotated[int, Field(ge=1, le=1000)] = 1
    min_healthy_time: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    healthy_deadline: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    progress_deadline: Annotated[float, Field(gt=0, le=7 * 86_400)] = 300.0
    canary: Annotated[int, Field(ge=1, le=1000)] = 1
    auto_promote: bool = True
    auto_revert: bool = True


class CheckpointSpec(BaseModel):
    """How a stateful instance is checkpointed (``[checkpoint]``).

    ``auto`` uses CRIU where the node has it switched on and falls back to the
    cooperative protocol (SIGUSR1, the app flushes its state to
    ``$AETHER_STATE_DIR`` and touches ``$AETHER_CHECKPOINT_ACK``); ``timeout``
    is how long the node waits for that acknowledgement before it stops the app.
    ``interval`` (seconds; ``0`` switches it off) is how often the node takes a
    cooperative checkpoint of an ACTIVE instance without stopping it: the app's
    recovery point objective (RPO), at most what a lost node takes with it.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["auto", "cooperative", "criu"] = "auto"
    timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    interval: Annotated[float, Field(ge=0, le=86_400)] = 5.0


class AppSecrets(BaseModel):
    """``[secrets]`` in aether.toml: the tenant's secrets the instances get, by name.

    ``ENV = "secret-name"`` lines set environment variables (upper-case names);
    ``[secrets.files]`` lines ``"path/in/app" = "secret-name"`` write files into the
    instance's tree (mode 0400, the instance's own). Only names are in the spec; the
    node fetches the values when it starts the instance (``docs/concepts.md#secrets``).
    """

    model_config = ConfigDict(extra="forbid")

    env: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _toml_shape(cls, data: object) -> object:
        """``{ENV = name, files = {...}}`` (aether.toml) or ``{env, files}`` (stored)."""
        if not isinstance(data, dict):
            return data
        env = {k: v for k, v in data.items() if k not in ("env", "files")}
        if not env:
            return data
        return {"env": {**data.get("env", {}), **env}, "files": data.get("files", {})}

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for env, name in value.items():
            if not ENV_NAME_RE.match(env):
                raise ValueError(
                    f"[secrets] {env}: an environment variable is upper-case letters, digits and _"
                )
            if not isinstance(name, str) or not _SECRET_NAME_RE.match(name):
                raise ValueError(f"[secrets] {env} = {name!r} is not a secret's name")
        return value

    @field_validator("files")
    @classmethod
    def _files(cls, value: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for path, name in value.items():
            if not isinstance(name, str) or not _SECRET_NAME_RE.match(name):
                raise ValueError(f"[secrets.files] {path!r} = {name!r} is not a secret's name")
            out[validate_secret_file(path)] = name
        return out

    def names(self) -> list[str]:
        """Every secret referenced, sorted, once."""
        return sorted({*self.env.values(), *self.files.values()})


class AppSpec(BaseModel):
    """The process spec of an app: how a node starts and checks one instance."""

    model_config = ConfigDict(extra="forbid")

    name: str
    start: Annotated[str, Field(min_length=1)]
    port_env: str = "PORT"
    health: str | None = "/"
    # seconds one start of an instance has to pass its health check (else it failed)
    health_timeout: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # seconds a stopping instance has to finish the requests it has in flight, after
    # every router confirmed it sends it nothing new; then SIGTERM (then SIGKILL)
    shutdown_grace: Annotated[float, Field(ge=0, le=3600)] = 30.0
    instances: Annotated[int, Field(ge=0, le=1000)] = 1
    env: dict[str, str] = Field(default_factory=dict)
    driver: str = "process"
    resources: Resources = Field(default_factory=Resources)
    constraints: dict[str, str] = Field(default_factory=dict)
    runtime: Runtime | None = None
    # runtime "slice": the slice's import path, module:attribute (docs/slices.md)
    slice: str | None = None
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    autoscale: AutoscaleSpec | None = None  # [autoscale]: the controller keeps min..max
    # stateful apps keep state in state_dir (relative to the app); it moves with them
    stateful: bool = False
    state_dir: str | None = None
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    # [secrets]: the tenant's secrets its instances get as env or files (names only)
    secrets: AppSecrets = Field(default_factory=AppSecrets)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_app_name(value)

    @field_validator("health")
    @classmethod
    def _health(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("health must be a path starting with '/'")
        return value

    @field_validator("slice")
    @classmethod
    def _slice(cls, value: str | None) -> str | None:
        if value is not None and not SLICE_PATH_RE.match(value):
            raise ValueError(
                f"slice must be an import path module:attribute (e.g. shop.catalog:Catalog), "
                f"not {value!r}"
            )
        return value

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = PurePosixPath(value).parts
        if not parts or value.startswith("/") or ".." in parts or "\x00" in value:
            raise ValueError("state_dir must be a relative path inside the app, without '..'")
        return PurePosixPath(*parts).as_posix()

    @model_validator(mode="after")
    def _stateful(self) -> AppSpec:
        if self.stateful and self.state_dir is None:
            raise ValueError(
                'stateful apps need state_dir = "..." (the directory, relative to the app, '
                "whose contents move with an instance)"
            )
        if self.runtime == "slice" and self.slice is None:
            raise ValueError('runtime "slice" needs slice = "module:attribute" (its import path)')
        if self.slice is not None and self.runtime not in ("slice", None):
            raise ValueError(f'slice = "..." is for runtime "slice", not {self.runtime!r}')
        for env in self.secrets.env:
            if env == self.port_env or env.startswith("AETHER_"):
                raise ValueError(f"[secrets] {env}: the node sets this variable itself")
        state = self.state_dir
        for path in self.secrets.files:
            if state is not None and (path == state or path.startswith(state + "/")):
                raise ValueError(
                    f"secret file {path!r} is inside state_dir: it would travel with checkpoints"
                )
        return self
