"""Layers 2 and 3: optional advisers on an OpenAI-compatible chat-completions endpoint.

- **tactical** (layer 2, every ``AETHER_ADVISER_TACTICAL_INTERVAL`` s, default 5):
  per-app scaling proposals;
- **strategic** (layer 3, every ``AETHER_ADVISER_STRATEGIC_INTERVAL`` s, default
  30): drains and undrains of nodes.

Each is on only when its ``..._URL`` is set (a base URL ending in ``/v1``, as
the OpenAI SDKs take it; ``/chat/completions`` is appended). Every call sends
a compact JSON summary of the cluster and asks for
``{"proposals": [{"kind", "target", "instances"?, "reason"}]}`` (JSON mode, with
``json`` code fences tolerated). Answers that cannot be used - an HTTP error, a
timeout, not JSON, no ``proposals`` list - are recorded as a ``failed`` decision
(kind ``advice``); every proposal goes through the controller's guardrails
(:meth:`aether.server.leader.observation.Decider.consider`) and is recorded as
applied or refused. Nothing an adviser says can raise out of its loop, and the cluster
runs fully without advisers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import httpx

from aether.core.autoscale import slope
from aether.model.decisions import Decision, DecisionOut, Proposal
from aether.server.leader.observation import Decider, Observation
from aether.server.settings import ServerSettings
from aether.store.election import Leadership

__all__ = [
    "MAX_PROPOSALS",
    "Adviser",
    "AdviserConfig",
    "AdviserError",
    "adviser_configs",
    "parse_proposals",
    "summarize",
]

log = logging.getLogger("aether.advisers")

MAX_PROPOSALS = 20  # per answer; the rest are ignored
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
LAYERS = {"tactical": 2, "strategic": 3}


class AdviserError(Exception):
    """The adviser's answer could not be used (recorded as a failed decision)."""


@dataclass(frozen=True)
class AdviserConfig:
    name: str  # tactical | strategic
    layer: int
    url: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str
    interval: float
    timeout: float


def adviser_configs(settings: ServerSettings) -> list[AdviserConfig]:
    """The advisers the settings turn on (those with a URL)."""
    out = []
    for name, layer in LAYERS.items():
        url = getattr(settings, f"adviser_{name}_url")
        if not url:
            continue
        interval = getattr(settings, f"adviser_{name}_interval")
        out.append(
            AdviserConfig(
                name=name,
                layer=layer,
                url=url.rstrip("/"),
                model=getattr(settings, f"adviser_{name}_model"),
                api_key=getattr(settings, f"adviser_{name}_api_key"),
                interval=interval,
                timeout=min(settings.adviser_timeout, interval),
            )
        )
    return out


# -- parsing ------------------------------------------------------------------------------


def _json_object(text: str) -> Any:
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            with contextlib.suppress(ValueError):
                return json.loads(text[start : end + 1])
    raise AdviserError(f"the answer is not JSON: {text[:120]!r}")


def parse_proposals(content: str) -> list[Proposal]:
    """``{"proposals": [...]}`` (or a bare list) from the model's message content.

    Raises AdviserError when there is no such list; entries that are not objects
    come back as empty proposals for the guardrails to refuse.
    """
    data = _json_object(content)
    items = data.get("proposals") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise AdviserError('the answer has no "proposals" list')
    out = []
    for item in items[:MAX_PROPOSALS]:
        if isinstance(item, dict):
            out.append(Proposal.model_validate(item))
        else:
            out.append(Proposal(reason=f"not an object: {str(item)[:100]}"))
    return out


# -- the summary the model sees -----------------------------------------------------------


def _round(value: float) -> float:
    return round(value, 3)


def summarize(obs: Observation, name: str, settings: ServerSettings) -> dict[str, Any]:
    """A compact, JSON-ready picture of the cluster for the ``name`` adviser."""
    latest = obs.latest
    schedulable = sum(1 for n in obs.snapshot.nodes if not n.draining)
    apps = []
    for app in obs.snapshot.apps:
        entry: dict[str, Any] = {
            "app": app.app,
            "instances": app.instances,
            "reporting": app.reporting,
        }
        if name == "tactical":
            spec = app.autoscale
            entry["autoscale"] = (
                {
                    "min": spec.min,
                    "max": spec.max,
                    "metric": spec.metric,
                    "target": spec.target,
                    "max_step_up": spec.max_step_up,
                    "max_step_down": spec.max_step_down,
                }
                if spec
                else None
            )
            entry["rolling_out"] = app.rolling_out
            changed = obs.last_change.get(app.app)
            entry["last_change_seconds_ago"] = (
                None if changed is None else round(obs.now - changed, 1)
            )
            sample = latest.apps.get(app.app) if latest else None
            if sample is not None:
                entry["now"] = {
                    "cpu_per_instance": _round(sample.cpu_per_instance),
                    "in_flight_per_instance": _round(sample.in_flight_per_instance),
                    "latency_ms": _round(sample.latency_ms),
                    "calls_per_s": _round(sample.calls_per_s),
                    "errors_per_s": _round(sample.errors_per_s),
                }
            if spec is not None and app.series:
                entry["metric_trend_per_s"] = _round(slope(app.series))
        apps.append(entry)
    summary: dict[str, Any] = {"now": round(obs.now, 1), "apps": apps}
    if name == "tactical":
        summary["nodes"] = {"live": len(obs.snapshot.nodes), "schedulable": schedulable}
        summary["limits"] = {
            "min_seconds_between_changes_of_one_app": settings.controller_min_interval,
            "max_instances_without_autoscale": settings.controller_max_instances,
        }
    else:
        nodes = []
        for node in obs.snapshot.nodes:
            entry = {"node": node.node, "draining": node.draining, "drained_by": node.drained_by}
            if node.risk is not None:
                entry["risk"] = {
                    "status": node.risk.status.value,
                    "root_cause": node.risk.root_cause,
                    "confidence": _round(node.risk.confidence),
                }
            figures = latest.nodes.get(node.node) if latest else None
            if figures is not None:
                entry["cpu"] = _round(figures.cpu)
                entry["memory_fraction"] = _round(figures.memory_fraction)
                entry["instances"] = figures.instances
                entry["stale"] = figures.stale
            nodes.append(entry)
        summary["nodes"] = nodes
        summary["limits"] = {"max_drains_per_round": 1, "schedulable_nodes": schedulable}
    return summary


_FORMAT = (
    'Answer with one JSON object and nothing else: {"proposals": [...]}. '
    'Propose nothing ({"proposals": []}) when nothing needs to change. '
    "Every proposal passes guardrails before anything happens; proposals outside them are "
    "refused and recorded."
)
PROMPTS = {
    "tactical": (
        "You are the tactical adviser of Aether, a platform that runs apps on a cluster. "
        "You see each app's instance count, its [autoscale] bounds and its load per instance "
        "now and its trend. Propose instance counts that keep each app near its target: "
        '{"kind": "scale", "target": "<app>", "instances": <whole number>, '
        '"reason": "<one sentence with the figures>"}. Stay within min..max, change an app by '
        "at most max_step_up more or max_step_down fewer instances, and leave apps that are "
        "rolling out or changed recently alone. " + _FORMAT
    ),
    "strategic": (
        "You are the strategic adviser of Aether, a platform that runs apps on a cluster of "
        "nodes. You see each node's risk (status, root cause, confidence), load and drain "
        "state. Propose draining a node whose workloads should move away before it fails: "
        '{"kind": "drain", "target": "<node>", "reason": "..."}, or undraining a node you '
        'drained before that is healthy again: {"kind": "undrain", "target": "<node>", '
        '"reason": "..."}. Never drain the last schedulable node; drain at most one node per '
        "answer; nodes drained by an operator are not yours to undrain. " + _FORMAT
    ),
}


# -- the adviser ----------------------------------------------------------------------------


class Adviser:
    def __init__(
        self,
        controller: Decider,
        config: AdviserConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.controller = controller
        self.config = config
        self.transport = transport
        self.json_mode = True  # dropped if the endpoint rejects response_format
        self.calls = 0

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.config.layer, "advice", self.config.name)

    async def run(self, leadership: Leadership) -> None:
        """The leader loop: one consultation every ``interval`` seconds."""
        async with self._client() as client:
            while not leadership.lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.interval):
                        await leadership.lost.wait()
                if leadership.lost.is_set():
                    return
                try:
                    await self.consult(leadership, client)
                except Exception:
                    log.exception("%s adviser pass failed; trying again", self.config.name)

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.timeout, connect=min(self.config.timeout, 3.0)),
            transport=self.transport,
        )

    async def consult(
        self, leadership: Leadership, client: httpx.AsyncClient | None = None
    ) -> list[DecisionOut]:
        """Ask once, guard and apply the proposals; the decisions recorded."""
        obs = await self.controller.observe()
        summary = summarize(obs, self.config.name, self.controller.settings)
        content = ""
        try:
            if client is None:
                async with self._client() as own:
                    content = await self.chat(own, summary)
            else:
                content = await self.chat(client, summary)
            proposals = parse_proposals(content)
        except AdviserError as exc:
            return await self._failed(str(exc), content, obs.now)
        except httpx.TimeoutException:
            return await self._failed(
                f"no answer within {self.config.timeout:g} s", content, obs.now
            )
        except httpx.HTTPError as exc:
            return await self._failed(f"{type(exc).__name__}: {exc}", content, obs.now)
        self.controller.forget(self.key)
        if not proposals:
            return []
        results = await self.controller.consider(
            self.config.layer,
            proposals,
            leadership,
            inputs={"adviser": self.config.name, "model": self.config.model},
        )
        return [recorded for _, recorded in results if recorded is not None]

    async def chat(self, client: httpx.AsyncClient, summary: dict[str, Any]) -> str:
        """One chat-completions call; the message content."""
        self.calls += 1
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": PROMPTS[self.config.name]},
                {"role": "user", "content": json.dumps(summary, separators=(",", ":"))},
            ],
            "temperature": 0,
        }
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        url = f"{self.config.url}/chat/completions"
        if self.json_mode:
            response = await client.post(
                url, json={**body, "response_format": {"type": "json_object"}}, headers=headers
            )
            if response.status_code in (400, 422) and "response_format" in response.text:
                self.json_mode = False  # this endpoint has no JSON mode: ask in words only
                response = await client.post(url, json=body, headers=headers)
        else:
            response = await client.post(url, json=body, headers=headers)
        if not response.is_success:
            raise AdviserError(f"HTTP {response.status_code} from {url}: {response.text[:200]}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise AdviserError(f"not a chat-completions answer: {response.text[:200]!r}") from None
        if not isinstance(content, str):
            raise AdviserError(f"the message content is not text: {content!r:.200}")
        return content

    async def _failed(self, detail: str, content: str, now: float) -> list[DecisionOut]:
        log.warning("%s adviser: %s", self.config.name, detail)
        decision = Decision(
            layer=self.config.layer,
            kind="advice",
            target=self.config.name,
            inputs={"model": self.config.model, "answer": content[:500]},
            reason=f"the {self.config.name} adviser's answer could not be used",
        )
        recorded = await self.controller.record_once(self.key, decision, "failed", detail, now)
        return [recorded] if recorded is not None else []
