"""The runs pages: the tenant's runs (``/ui/runs``), an agent's latest runs and the form
that starts one, and the run view (``/ui/runs/{id}``): its timeline of model and tool
steps with the policy's decisions, approvals, cancel, and how it follows a run live.

Runs happen for real: a node's task worker drives them (``agent_worker``) against the
scripted model server."""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.support.agent_node import agent_worker
from tests.support.api import bearer, unique
from tests.support.browser import axe_violations, new_console, screenshot, sign_in
from tests.support.console import csrf_of, signed_in
from tests.support.model_server import ModelServer, call, call_tools, model_server, say
from tests.support.server import RunningServer
from tests.support.waiting import wait_for

CAREFUL = {"id": "careful", "tools": ["search"], "approval_required": ["search"]}


@pytest.fixture(scope="module")
def llm() -> Iterator[ModelServer]:
    with model_server() as server:
        yield server


def api(server: RunningServer, method: str, path: str, token: str, **kw: Any) -> Any:
    with httpx.Client(base_url=server.base_url, headers=bearer(token), timeout=40.0) as http:
        answer = http.request(method, path, **kw)
    assert answer.status_code < 300, answer.text
    return answer.json() if answer.content else None


def new_agent(
    server: RunningServer,
    llm: ModelServer,
    admin: str,
    tools: list[str],
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An agent of ``admin``'s tenant on a model at the scripted server."""
    model = {
        "name": unique("m"),
        "base_url": llm.url,
        "model_id": "test-model",
        "price_in_per_1k": 1.0,
        "price_out_per_1k": 2.0,
    }
    made = api(server, "POST", "/api/v1/models", admin, json=model)
    policy_ids = ["default-safe"]
    if policy is not None:
        api(server, "POST", "/api/v1/policies", admin, json=policy)
        policy_ids = [policy["id"]]
    body = {
        "name": unique("agent"),
        "model": made["ref"],
        "policy_ids": policy_ids,
        "tool_ids": tools,
    }
    agent: dict[str, Any] = api(server, "POST", "/api/v1/agents", admin, json=body)
    return agent


def start(server: RunningServer, token: str, agent: dict[str, Any], **body: Any) -> dict[str, Any]:
    """A run of ``agent`` (``background``: at once, else when it settles)."""
    body = {"input": "hi", "wait": 30, **body}
    run: dict[str, Any] = api(
        server, "POST", f"/api/v1/agents/{agent['id']}/runs", token, json=body
    )
    return run


def detail(server: RunningServer, token: str, run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = api(server, "GET", f"/api/v1/runs/{run_id}", token)
    return found


@contextlib.contextmanager
def worker(server: RunningServer, tmp: Any, *agents: dict[str, Any]) -> Iterator[None]:
    """Node n1's task worker, driving the agents' runs."""
    with agent_worker(
        server.base_url, server.node_token("n1"), "n1", tmp, *(a["id"] for a in agents)
    ):
        yield


def step_of(page: str, seq: int) -> str:
    found = re.search(
        rf'<li [^>]*data-step="{seq}"[^>]*>(.*?)(?=<li class="step-|</ol>)', page, re.S
    )
    assert found, page
    return html.unescape(found.group(1))


def run_rows(page: str) -> list[str]:
    return re.findall(r'<tr data-run="([^"]+)">', page)


# -- the runs list and an agent's runs --------------------------------------------------------


def test_the_runs_page_lists_the_tenants_runs_with_a_status_filter(
    server: RunningServer, llm: ModelServer, tmp_path: Any
) -> None:
    tenant = unique("runs-ui")
    admin = server.mint("admin", tenant)
    driven, idle = new_agent(server, llm, admin, []), new_agent(server, llm, admin, [])
    llm.script(say("Hello from the model"))
    with worker(server, tmp_path, driven):
        done = start(server, admin, driven)
    assert done["status"] == "completed", done
    queued = start(server, admin, idle, background=True)
    foreign_admin = server.new_tenant()
    foreign = start(
        server, foreign_admin, new_agent(server, llm, foreign_admin, []), background=True
    )
    with signed_in(server.base_url, server.mint("viewer", tenant)) as client:
        page = client.get("/ui/runs")
        completed = client.get("/ui/runs", params={"status": "completed"})
        of_idle = client.get("/ui/runs", params={"agent": idle["id"]})
        bad = client.get("/ui/runs", params={"status": "bogus"})
    assert page.status_code == 200, page.text
    nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', page.text, re.S)
    assert nav and '<a href="/ui/runs" aria-current="page">Runs</a>' in nav.group(1)
    assert set(run_rows(page.text)) == {done["id"], queued["id"]}
    assert foreign["id"] not in page.text
    row = re.search(rf'<tr data-run="{done["id"]}">(.*?)</tr>', page.text, re.S)
    assert row, page.text
    cells = row.group(1)
    assert f'href="/ui/runs/{done["id"]}"' in cells and f'href="/ui/agents/{driven["id"]}"' in cells
    assert "completed" in cells and done["thread_id"] in cells and "0.0" in cells
    assert run_rows(completed.text) == [done["id"]]
    assert '<option value="completed" selected>' in completed.text
    assert run_rows(of_idle.text) == [queued["id"]]
    assert bad.status_code == 400, bad.text
    assert "unknown status &#39;bogus&#39;" in bad.text


def test_an_agents_page_lists_its_runs_and_an_operator_starts_one(
    server: RunningServer, llm: ModelServer
) -> None:
    tenant = unique("runs-start")
    admin = server.mint("admin", tenant)
    agent = new_agent(server, llm, admin, [])  # no node drives it: its runs stay queued
    path = f"/ui/agents/{agent['id']}"
    with signed_in(server.base_url, server.mint("operator", tenant)) as client:
        csrf = csrf_of(client, path)
        started = client.post(
            f"{path}/runs", data={"input": "what is up?", "thread_id": "t-one", "csrf": csrf}
        )
        assert started.status_code == 303, started.text
        run_id = started.headers["location"].split("?")[0].rsplit("/", 1)[1]
        page = client.get(path)
        refused = client.post(
            f"{path}/runs", data={"input": "keep me", "thread_id": "not a thread!", "csrf": csrf}
        )
        no_csrf = client.post(f"{path}/runs", data={"input": "x"})
    run = detail(server, admin, run_id)
    assert run["input"] == "what is up?" and run["thread_id"] == "t-one"
    assert run["agent_id"] == agent["id"] and run["status"] == "queued"
    assert page.status_code == 200 and 'data-testid="start-run"' in page.text
    row = re.search(rf'<tr data-run="{run_id}">(.*?)</tr>', page.text, re.S)
    assert row and f'href="/ui/runs/{run_id}"' in row.group(1) and "t-one" in row.group(1)
    assert refused.status_code == 400, refused.text
    assert 'data-testid="run-error"' in refused.text and "thread_id" in refused.text
    assert ">keep me</textarea>" in refused.text and 'value="not a thread!"' in refused.text
    assert no_csrf.status_code == 403, no_csrf.text
    assert [r["id"] for r in api(server, "GET", "/api/v1/runs", admin)["runs"]] == [run_id]


def test_a_viewer_sees_an_agents_runs_but_cannot_start_one(
    server: RunningServer, llm: ModelServer
) -> None:
    tenant = unique("runs-viewer")
    agent = new_agent(server, llm, server.mint("admin", tenant), [])
    path = f"/ui/agents/{agent['id']}"
    with signed_in(server.base_url, server.mint("viewer", tenant)) as client:
        page = client.get(path)
        refused = client.post(f"{path}/runs", data={"input": "x", "csrf": csrf_of(client, path)})
    assert page.status_code == 200, page.text
    assert 'data-testid="agent-runs"' in page.text and 'data-testid="start-run"' not in page.text
    assert "Starting a run needs the operator role." in page.text
    assert refused.status_code == 403, refused.text
    assert api(server, "GET", "/api/v1/runs", server.mint("admin", tenant))["runs"] == []


# -- the run view -----------------------------------------------------------------------------


def test_the_run_view_shows_each_step_with_the_policys_decision_and_the_totals(
    server: RunningServer, llm: ModelServer, tmp_path: Any
) -> None:
    tenant = unique("runview")
    admin = server.mint("admin", tenant)
    agent = new_agent(server, llm, admin, ["search", "memory-write"])
    llm.script(  # memory-write is not in default-safe: denied; search is allowed
        call_tools(call("memory-write", text="secret plan"), usage=(100, 10)),
        call_tools(call("search", query="aether"), usage=(200, 20)),
        say("All done", usage=(300, 30)),
    )
    with worker(server, tmp_path, agent):
        run = start(server, admin, agent, input="remember this")
    assert run["status"] == "completed", run
    steps = detail(server, admin, run["id"])["steps"]
    with signed_in(server.base_url, server.mint("viewer", tenant)) as client:
        page = client.get(f"/ui/runs/{run['id']}")
    assert page.status_code == 200, page.text
    text = page.text
    assert re.findall(r'data-step="(\d+)" data-kind="(\w+)"', text) == [
        ("1", "model"),
        ("2", "tool"),
        ("3", "model"),
        ("4", "tool"),
        ("5", "model"),
    ]
    first = step_of(text, 1)
    assert "Model call" in first and "100 tokens in, 10 out" in first and "0.1200" in first
    assert "memory-write" in first  # the call it asked for
    denied = step_of(text, 2)
    assert "memory-write" in denied and "state-deny" in denied and "state-denied" in denied
    for reason in steps[1]["reasons"]:
        assert reason in denied
    assert steps[1]["enforcement_ids"] and all(
        f"#{e}" in denied for e in steps[1]["enforcement_ids"]
    )
    assert json.dumps(steps[1]["arguments"], indent=2) in denied
    allowed = step_of(text, 4)
    assert "state-allow" in allowed and '"query": "aether"' in allowed
    assert steps[3]["content"] in allowed and steps[3]["idempotency_key"] in allowed
    assert "<dt>Node</dt><dd>n1</dd>" in text  # the node that drove the run
    assert "All done" in step_of(text, 5)
    facts = html.unescape(text)
    assert 'data-run-active="false"' in text and "Cancel run" not in text
    assert '<pre data-testid="run-output">All done</pre>' in text
    assert '<pre data-testid="run-input">remember this</pre>' in text
    assert f'{600 + 60} <span class="muted">(600 in, 60 out)</span>' in facts
    assert f"{run['cost']:.4f}" in facts and "completed" in facts
    assert 'data-testid="run-stop-reason">completed<' in text


def test_another_tenants_run_is_not_found(server: RunningServer, llm: ModelServer) -> None:
    admin = server.new_tenant()
    run = start(server, admin, new_agent(server, llm, admin, []), background=True)
    with signed_in(server.base_url, server.new_tenant()) as client:
        csrf = csrf_of(client)
        answers = [
            client.get(f"/ui/runs/{run['id']}"),
            client.post(f"/ui/runs/{run['id']}/cancel", data={"csrf": csrf}),
            client.post(
                f"/ui/runs/{run['id']}/approvals", data={"csrf": csrf, "decision": "approve"}
            ),
        ]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert f"run {run['id']!r} not found" in html.unescape(answer.text)
    assert detail(server, admin, run["id"])["status"] == "queued"


def test_a_run_waiting_for_approval_roles_decide_who_approves_rejects_and_cancels(
    server: RunningServer, llm: ModelServer, tmp_path: Any
) -> None:
    tenant = unique("approve-ui")
    admin = server.mint("admin", tenant)
    agent = new_agent(server, llm, admin, ["search"], CAREFUL)
    llm.script(call_tools(call("search", query="one")), say("finished"))
    path = ""
    with worker(server, tmp_path, agent):
        run = start(server, admin, agent)
        assert run["status"] == "requires_approval", run
        path = f"/ui/runs/{run['id']}"
        with signed_in(server.base_url, server.mint("viewer", tenant)) as viewer:
            seen = viewer.get(path)
            by_viewer = viewer.post(
                f"{path}/approvals", data={"csrf": csrf_of(viewer), "decision": "approve"}
            )
            cancel_by_viewer = viewer.post(f"{path}/cancel", data={"csrf": csrf_of(viewer)})
        assert seen.status_code == 200, seen.text
        assert "Waiting for an operator" in seen.text and 'data-run-active="true"' in seen.text
        assert 'data-testid="approval-form"' not in seen.text and "Cancel run" not in seen.text
        assert by_viewer.status_code == 403 and cancel_by_viewer.status_code == 403
        assert detail(server, admin, run["id"])["status"] == "requires_approval"
        with signed_in(server.base_url, server.mint("operator", tenant)) as operator:
            shown = operator.get(path)
            no_csrf = operator.post(f"{path}/approvals", data={"decision": "reject"})
            rejected = operator.post(
                f"{path}/approvals",
                data={"csrf": csrf_of(operator), "decision": "reject", "reason": "not today"},
                follow_redirects=True,
            )

            def finished() -> Any:
                found = detail(server, admin, run["id"])
                return found if found["status"] == "completed" else None

            wait_for(finished, 20, "the run to complete after the rejection")
            final = operator.get(path)
    assert 'data-testid="approval-form"' in shown.text and "Cancel run" in shown.text
    assert 'name="step" value="2"' in shown.text
    assert no_csrf.status_code == 403
    assert rejected.status_code == 200, rejected.text
    assert "Rejected the call to search (step 2)." in rejected.text
    tool = step_of(final.text, 2)
    assert "Rejected by" in tool and "not today" in tool and "state-rejected" in tool
    assert "state-approval" in tool  # the policy's decision: ask a person
    assert "finished" in final.text and "Cancel run" not in final.text


def test_an_operator_cancels_an_active_run(server: RunningServer, llm: ModelServer) -> None:
    tenant = unique("cancel-ui")
    admin = server.mint("admin", tenant)
    run = start(server, admin, new_agent(server, llm, admin, []), background=True)
    with signed_in(server.base_url, server.mint("operator", tenant)) as client:
        path = f"/ui/runs/{run['id']}"
        assert "Cancel run" in client.get(path).text
        cancelled = client.post(
            f"{path}/cancel", data={"csrf": csrf_of(client)}, follow_redirects=True
        )
    assert cancelled.status_code == 200, cancelled.text
    assert f"Run {run['id']} is cancelled." in cancelled.text
    assert 'data-run-active="false"' in cancelled.text and "Cancel run" not in cancelled.text
    assert detail(server, admin, run["id"])["status"] == "cancelled"


# -- in a browser -----------------------------------------------------------------------------


def test_in_a_browser_an_operator_starts_a_run_and_approves_it_while_the_view_follows(
    server: RunningServer, browser: Browser, llm: ModelServer, tmp_path: Any
) -> None:
    tenant = unique("runview-ui")
    admin = server.mint("admin", tenant)
    agent = new_agent(server, llm, admin, ["search"], CAREFUL)
    llm.script(call_tools(call("search", query="aether"), delay=1.5), say("All done", delay=1.5))
    context = new_console(browser)
    page = context.new_page()
    with worker(server, tmp_path, agent):
        sign_in(page, server.base_url, server.mint("operator", tenant), f"/ui/agents/{agent['id']}")
        page.fill("#run-input", "find aether")
        page.get_by_role("button", name="Start run").click()
        expect(page.locator("h1")).to_contain_text("Run run")
        page.evaluate("window.notReloaded = true")
        # the view follows the run: the call waiting for approval appears without a reload
        waiting = page.locator('li[data-status="pending_approval"]')
        expect(waiting).to_contain_text("search")
        expect(page.get_by_test_id("run-status")).to_contain_text("requires_approval")
        assert page.evaluate("window.notReloaded") is True
        expect(waiting.get_by_test_id("step-decision")).to_contain_text("approval")
        assert axe_violations(page) == []
        screenshot(page, "run-approval")
        # what is being typed survives the view's refreshes
        page.fill("#reason-2", "looks fine")
        page.wait_for_timeout(3000)
        expect(page.locator("#reason-2")).to_have_value("looks fine")
        waiting.get_by_role("button", name="Approve").click()
        expect(page.locator(".flash.ok")).to_contain_text("Approved the call to search")
        page.evaluate("window.notReloaded = true")
        expect(page.get_by_test_id("run-output")).to_have_text("All done", timeout=20_000)
        expect(page.get_by_test_id("run-status")).to_contain_text("completed")
        assert page.evaluate("window.notReloaded") is True
        expect(page.locator('li[data-step="2"]').get_by_test_id("step-approval")).to_contain_text(
            "Approved by"
        )
        expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
        assert axe_violations(page) == []
        screenshot(page, "run")
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Runs").click()
        expect(page.locator("h1")).to_have_text("Runs")
        screenshot(page, "runs")
    context.close()


def test_the_runs_pages_fit_a_phone_and_pass_the_accessibility_scan(
    server: RunningServer, browser: Browser, llm: ModelServer, tmp_path: Any
) -> None:
    tenant = unique("runs-phone")
    admin = server.mint("admin", tenant)
    agent = new_agent(server, llm, admin, ["search", "memory-write"])
    llm.script(call_tools(call("memory-write", text="a long " * 40)), say("done " * 60))
    with worker(server, tmp_path, agent):
        run = start(server, admin, agent, input="a fairly long question " * 10)
    assert run["status"] == "completed", run
    context = new_console(browser, width=390, height=844)
    page = context.new_page()
    sign_in(page, server.base_url, admin, "/ui/runs")
    no_overflow = "document.documentElement.scrollWidth <= window.innerWidth"
    for path, title in (
        ("/ui/runs", "Runs"),
        (f"/ui/runs/{run['id']}", f"Run {run['id']}"),
        (f"/ui/agents/{agent['id']}", f"Agent {agent['name']}"),
    ):
        page.goto(f"{server.base_url}{path}")
        expect(page.locator("main h1")).to_contain_text(title)
        assert axe_violations(page) == [], path
        assert page.evaluate(no_overflow), path
    context.close()
