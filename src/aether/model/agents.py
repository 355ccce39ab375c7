"""Models for AI agents: the API's bodies of ``/api/v1/models`` (a tenant's catalog of
model endpoints, addressed as ``model://NAME``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

from aether.model.time import Timestamp
from aether.model.urls import HttpUrlText

__all__ = [
    "MODEL_NAME_PATTERN",
    "ModelDeletedOut",
    "ModelIn",
    "ModelOut",
    "ModelTestOut",
    "TokenUsage",
    "model_ref",
]

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
Price = Annotated[float, Field(ge=0, le=1_000_000)]  # per 1,000 tokens, in any currency


def model_ref(name: str) -> str:
    """How agents and tasks name a model: ``model://NAME``."""
    return f"model://{name}"


class ModelIn(BaseModel):
    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
    #: the protocol: OpenAI-compatible chat completions (OpenAI, vLLM, Ollama,
    #: llama.cpp's server, LM Studio)
    provider: Literal["openai"] = "openai"
    #: where the API is, with its version: ``https://api.openai.com/v1``,
    #: ``http://127.0.0.1:11434/v1``
    base_url: HttpUrlText
    model_id: Annotated[str, Field(min_length=1, max_length=256)]
    context_window: Annotated[int, Field(ge=1, le=100_000_000)] = 8192
    price_in_per_1k: Price = 0.0
    price_out_per_1k: Price = 0.0
    #: sent as ``Authorization: Bearer KEY``; kept encrypted, never returned
    api_key: Annotated[SecretStr | None, Field(max_length=4096)] = None

    @field_validator("base_url")
    @classmethod
    def _without_end_slash(cls, value: str) -> str:
        return value.rstrip("/")


class ModelOut(BaseModel):
    name: str
    ref: str  # model://NAME
    provider: str
    base_url: str
    model_id: str
    context_window: int
    price_in_per_1k: float
    price_out_per_1k: float
    api_key_set: bool  # the key itself is never returned
    created_at: Timestamp


class ModelDeletedOut(BaseModel):
    name: str
    ref: str
    deleted: bool = True


class TokenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class ModelTestOut(BaseModel):
    """One tiny chat call through the model: it answered, how fast, what it cost."""

    name: str
    ref: str
    ok: bool = True
    latency_ms: float
    usage: TokenUsage | None  # None: the provider did not say
    reply: str  # the first 200 characters of the answer
    finish_reason: str | None
