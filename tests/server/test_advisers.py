"""Advisers (layers 2 and 3) against a local OpenAI-compatible server, guarded and recorded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from aether.client import ApiClient
from aether.model.decisions import DecisionOut
from aether.model.risk import RiskAssessment
from aether.server.leader.advisers import (
    Adviser,
    AdviserConfig,
    AdviserError,
    adviser_configs,
    parse_proposals,
)
from aether.server.settings import ServerSettings
from tests.server.test_controller import (
    controller_of,
    deploy_autoscaled,
    desired,
    eventually,
    leadership_of,
    node_states,
    register,
)
from tests.support.api import bearer, unique
from tests.support.fake_llm import Answer, FakeLLM, fake_llm
from tests.support.server import RunningServer, running_server

TACTICAL = "tactical-model"


# -- parsing (pure) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"proposals": []}', []),
        (
            '{"proposals": [{"kind": "scale", "target": "web", "instances": 3, "reason": "x"}]}',
            [("scale", "web", 3)],
        ),
        (
            'Sure!\n```json\n{"proposals": [{"kind": "drain", "target": "n1"}]}\n```\nDone.',
            [("drain", "n1", None)],
        ),
        ('```\n[{"kind": "undrain", "target": "n2"}]\n```', [("undrain", "n2", None)]),
        (
            'Here you go: {"proposals": [{"kind": "scale"}]} -- hope it helps',
            [("scale", None, None)],
        ),
        ('{"proposals": [42, "drain n1"]}', [(None, None, None), (None, None, None)]),
        ('{"proposals": [{"kind": "scale", "extra": {"nested": true}}]}', [("scale", None, None)]),
    ],
)
def test_proposals_are_read_defensively(content: str, expected: list[tuple[Any, ...]]) -> None:
    proposals = parse_proposals(content)
    assert [(p.kind, p.target, p.instances) for p in proposals] == expected


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("I think you should add more servers.", "not JSON"),
        ("", "not JSON"),
        ('{"proposals": "all of them"}', 'no "proposals" list'),
        ('{"advice": []}', 'no "proposals" list'),
        ("42", 'no "proposals" list'),
        ("{broken json", "not JSON"),
    ],
)
def test_unusable_answers_raise_adviser_error(content: str, fragment: str) -> None:
    with pytest.raises(AdviserError) as info:
        parse_proposals(content)
    assert fragment in str(info.value)


def test_a_flood_of_proposals_is_cut_short() -> None:
    many = json.dumps({"proposals": [{"kind": "drain", "target": f"n{i}"} for i in range(500)]})
    assert len(parse_proposals(many)) == 20


# -- settings ---------------------------------------------------------------------------------


def test_adviser_settings_are_validated_and_off_by_default() -> None:
    assert adviser_configs(ServerSettings()) == []
    settings = ServerSettings(
        adviser_tactical_url="http://127.0.0.1:8000/v1/",
        adviser_tactical_model="m",
        adviser_tactical_api_key="k",
        adviser_strategic_url="https://llm.example/v1",
        adviser_strategic_model="big",
        adviser_strategic_interval=60,
    )
    tactical, strategic = adviser_configs(settings)
    assert (tactical.name, tactical.layer, tactical.url, tactical.interval) == (
        "tactical",
        2,
        "http://127.0.0.1:8000/v1",
        5.0,
    )
    assert tactical.timeout == 5.0 and tactical.api_key == "k"
    assert (strategic.layer, strategic.model, strategic.timeout) == (3, "big", 10.0)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"adviser_tactical_interval": 1}, "greater than or equal to 2"),
        ({"adviser_strategic_interval": 61}, "less than or equal to 60"),
        ({"adviser_tactical_url": "ftp://x", "adviser_tactical_model": "m"}, "http(s) base URL"),
        ({"adviser_strategic_url": "http://x/v1"}, "AETHER_ADVISER_STRATEGIC_MODEL is needed"),
    ]
    for bad, fragment in cases:
        with pytest.raises(ValidationError) as info:
            ServerSettings(**bad)
        assert fragment in str(info.value)


# -- against the local chat-completions server ---------------------------------------------------


class NoRisk:
    def assessments(self) -> dict[str, RiskAssessment]:
        return {}


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    with fake_llm() as server:
        yield server


@pytest.fixture(scope="module")
def adv(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLM) -> Iterator[RunningServer]:
    with running_server(
        tmp_path_factory.mktemp("advisers"),
        lease_ttl=60.0,
        adviser_tactical_url=llm.url,
        adviser_tactical_model=TACTICAL,
        adviser_tactical_api_key="sk-test",
        adviser_tactical_interval=2.0,
        controller_min_interval=0.0,
    ) as server:
        controller_of(server).risk = NoRisk()  # layer 1 stays out of the node tests
        yield server


@pytest.fixture
async def http(adv: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=adv.base_url, timeout=10.0, headers=bearer(adv.admin_token)
    ) as client:
        yield client


@pytest.fixture
async def api(adv: RunningServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(adv.base_url, adv.admin_token) as client:
        yield client


def direct(
    adv: RunningServer, llm: FakeLLM, name: str, model: str, timeout: float = 2.0
) -> Adviser:
    """An adviser driven by hand (its own model name, so the loop's script is not touched)."""
    config = AdviserConfig(
        name=name,
        layer={"tactical": 2, "strategic": 3}[name],
        url=llm.url,
        model=model,
        api_key="",
        interval=2.0,
        timeout=timeout,
    )
    return Adviser(controller_of(adv), config)


def consult(adv: RunningServer, adviser: Adviser) -> list[DecisionOut]:
    return adv.run(adviser.consult(leadership_of(adv)), timeout=20)


def proposals(*items: dict[str, Any]) -> str:
    return json.dumps({"proposals": list(items)})


async def test_the_tactical_loop_applies_a_sensible_proposal(
    adv: RunningServer, llm: FakeLLM, http: httpx.AsyncClient, api: ApiClient
) -> None:
    app = unique("advised")
    await deploy_autoscaled(http, adv.admin_token, app, 2, min=1, max=6, metric="in_flight")

    def answer(body: dict[str, Any]) -> str:
        summary = json.loads(body["messages"][1]["content"])
        mine = [a for a in summary["apps"] if a["app"] == app]
        if not mine or mine[0]["instances"] != 2:
            return '{"proposals": []}'
        reason = "in_flight is rising towards the target; one more instance absorbs it"
        return proposals({"kind": "scale", "target": app, "instances": 3, "reason": reason})

    llm.defaults[TACTICAL] = answer
    try:
        assert await eventually(lambda: desired(http, app), lambda n: n == 3, timeout=20) == 3
    finally:
        llm.defaults.pop(TACTICAL)
    [decision] = await eventually(
        lambda: api.decisions(target=app, layer=2), lambda ds: len(ds) == 1
    )
    assert (decision.kind, decision.outcome, decision.detail) == ("scale", "applied", "")
    assert decision.action == {"instances": 3, "from": 2, "direction": "up"}
    assert decision.reason.startswith("in_flight is rising")
    assert decision.inputs["adviser"] == "tactical" and decision.inputs["model"] == TACTICAL
    assert decision.inputs["proposal"]["instances"] == 3

    request = next(r for r in reversed(llm.requests_for(TACTICAL)) if app in str(r["messages"]))
    assert request["response_format"] == {"type": "json_object"}
    assert request["_authorization"] == "Bearer sk-test"
    assert "tactical adviser" in request["messages"][0]["content"]
    summary = json.loads(request["messages"][1]["content"])
    entry = next(a for a in summary["apps"] if a["app"] == app)
    assert entry["autoscale"]["min"] == 1 and entry["autoscale"]["max"] == 6
    assert entry["autoscale"]["metric"] == "in_flight"


async def test_harmful_scaling_is_refused_by_the_guardrails_and_recorded(
    adv: RunningServer, llm: FakeLLM, http: httpx.AsyncClient, api: ApiClient
) -> None:
    app = unique("guarded")
    await deploy_autoscaled(http, adv.admin_token, app, 2, min=2, max=5)
    llm.script(
        "harm",
        proposals(
            {"kind": "scale", "target": app, "instances": 1000, "reason": "more is better"},
            {"kind": "scale", "target": app, "instances": 0, "reason": "save money"},
            {"kind": "scale", "target": app, "instances": "lots", "reason": "?"},
            {"kind": "drain", "target": "anything", "reason": "wrong layer"},
            {"kind": "scale", "target": "no-such-app", "instances": 3},
        ),
    )
    recorded = consult(adv, direct(adv, llm, "tactical", "harm"))
    assert [d.outcome for d in recorded] == ["refused"] * 5
    assert "1000 instances is outside its [autoscale] bounds [2, 5]" in recorded[0].detail
    assert "+998 instances in one step; at most +4" in recorded[0].detail
    assert "0 instances is outside its [autoscale] bounds [2, 5]" in recorded[1].detail
    assert "instances must be a whole number, not 'lots'" in recorded[2].detail
    assert "layer 2 may propose only scale, not 'drain'" in recorded[3].detail
    assert "no app named 'no-such-app'" in recorded[4].detail
    assert await desired(http, app) == 2
    stored = await api.decisions(target=app, outcome="refused")
    assert {d.reason for d in stored} >= {"more is better", "save money"}
    assert all(d.layer == 2 and d.kind == "scale" for d in stored)


async def test_draining_every_node_is_refused_before_the_last_one(
    adv: RunningServer, llm: FakeLLM, http: httpx.AsyncClient, api: ApiClient
) -> None:
    one, two = unique("s1"), unique("s2")
    for node in (one, two):
        await register(http, adv.node_token(node), node)
    for node, state in (await node_states(http)).items():  # only these two take part
        if node not in (one, two) and state["state"] == "ready":
            assert (await http.post(f"/api/v1/nodes/{node}/drain")).status_code == 200
    strategic = direct(adv, llm, "strategic", "strategic-direct")
    everything = [{"kind": "drain", "target": n, "reason": "consolidate"} for n in (one, two)]
    llm.script("strategic-direct", proposals(*everything))
    first, second = consult(adv, strategic)
    assert (first.kind, first.target, first.outcome, first.layer) == ("drain", one, "applied", 3)
    assert second.outcome == "refused" and second.target == two
    assert f"{two} is the last schedulable node; never drain it" in second.detail
    states = await node_states(http)
    assert states[one]["state"] == "draining" and states[two]["state"] == "ready"
    assert states[one]["drain_reason"] == "consolidate"

    # the same proposal again is a no-op, recorded once; undraining its own drain is allowed
    llm.script("strategic-direct", proposals(everything[0]), proposals(everything[0]))
    assert [d.outcome for d in consult(adv, strategic)] == ["refused"]
    assert consult(adv, strategic) == []
    llm.script("strategic-direct", proposals({"kind": "undrain", "target": one, "reason": "ok"}))
    [undrain] = consult(adv, strategic)
    assert (undrain.kind, undrain.outcome) == ("undrain", "applied")
    assert (await node_states(http))[one]["state"] == "ready"

    # an operator's drain is not the adviser's to undo
    assert (await http.post(f"/api/v1/nodes/{two}/drain")).status_code == 200
    llm.script("strategic-direct", proposals({"kind": "undrain", "target": two}))
    [refused] = consult(adv, strategic)
    assert refused.outcome == "refused" and "only an operator undrains it" in refused.detail
    assert (await node_states(http))[two]["state"] == "draining"
    assert {d.outcome for d in await api.decisions(layer=3, target=one)} == {"applied", "refused"}


async def test_garbage_and_failures_are_recorded_as_failed_never_raised(
    adv: RunningServer, llm: FakeLLM, http: httpx.AsyncClient, api: ApiClient
) -> None:
    app = unique("garbage")
    await deploy_autoscaled(http, adv.admin_token, app, 2, min=1, max=5)
    adviser = direct(adv, llm, "tactical", "garbage", timeout=1.0)
    fenced = (
        "Here is my advice:\n```json\n"
        + proposals({"kind": "scale", "target": app, "instances": 3, "reason": "fenced"})
        + "\n```"
    )
    llm.script(
        "garbage",
        "I think you should add more servers!",
        "I think you should add more servers!",
        Answer(status=500, raw="upstream exploded"),
        Answer(raw='{"unexpected": true}'),
        Answer(delay=2.0),
        '{"proposals": "all of them"}',
        fenced,
    )
    outcomes: list[list[tuple[str, str, str]]] = []
    for _ in range(7):
        outcomes.append([(d.kind, d.outcome, d.detail) for d in consult(adv, adviser)])
    assert outcomes[0] == [
        ("advice", "failed", "the answer is not JSON: 'I think you should add more servers!'")
    ]
    assert outcomes[1] == []  # the same failure again is not recorded twice
    assert outcomes[2][0][1] == "failed" and "HTTP 500" in outcomes[2][0][2]
    assert "not a chat-completions answer" in outcomes[3][0][2]
    assert outcomes[4][0][2] == "no answer within 1 s"
    assert outcomes[5][0][2] == 'the answer has no "proposals" list'
    assert outcomes[6] == [("scale", "applied", "")]
    assert await desired(http, app) == 3
    failed = await api.decisions(kind="advice", outcome="failed")
    assert (
        len([d for d in failed if d.target == "tactical" and d.inputs["model"] == "garbage"]) == 5
    )
    assert failed[-1].inputs["answer"] == "I think you should add more servers!"
    assert failed[0].reason == "the tactical adviser's answer could not be used"


async def test_an_endpoint_without_json_mode_is_asked_in_words(
    adv: RunningServer, llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    llm.no_json_mode.add("plain")
    adviser = direct(adv, llm, "tactical", "plain")
    llm.script("plain", '{"proposals": []}')
    assert consult(adv, adviser) == []
    sent = llm.requests_for("plain")
    assert ["response_format" in r for r in sent] == [True, False]
    assert adviser.json_mode is False
    assert consult(adv, adviser) == []
    assert "response_format" not in llm.requests_for("plain")[-1]


def test_the_server_runs_the_configured_advisers(adv: RunningServer) -> None:
    advisers = [getattr(loop, "__self__", None) for loop in adv.leader_loops]
    configured = [a.config for a in advisers if isinstance(a, Adviser)]
    assert [(c.name, c.layer, c.model) for c in configured] == [("tactical", 2, TACTICAL)]
    assert any(a is controller_of(adv) for a in advisers)
