"""The tasks and sandboxes pages: the queue, a task, submit and cancel, sandboxes and runs."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
from playwright.sync_api import Browser, expect

from tests.support.api import bearer, unique
from tests.support.browser import axe_violations, new_console, screenshot, sign_in
from tests.support.console import csrf_of, signed_in
from tests.support.server import RunningServer

DISABLED = 'disabled title="needs the operator role"'


def api(server: RunningServer, method: str, path: str, token: str, **kw: Any) -> Any:
    answer = httpx.request(method, f"{server.base_url}{path}", headers=bearer(token), **kw)
    assert answer.status_code < 300, answer.text
    return answer.json()


def submit(server: RunningServer, queue: str, name: str = "box", token: str = "") -> Any:
    body = {"type": "vm:create", "payload": {"name": name}, "queue": queue}
    return api(server, "POST", "/api/v1/tasks", token or server.admin_token, json=body)


def in_queue(server: RunningServer, queue: str) -> list[Any]:
    found: list[Any] = api(
        server, "GET", "/api/v1/tasks", server.admin_token, params={"queue": queue}
    )
    return found


def sandbox_with_a_run(server: RunningServer) -> tuple[str, str]:
    """A sandbox created and one command run in it, over the node API: (sandbox, task)."""
    node, queue, admin = unique("tasknode"), unique("q"), server.admin_token
    creds = bearer(server.node_token(node))

    def claim_and_complete(result: dict[str, Any]) -> str:
        claim = {"node": node, "drivers": ["process"], "queues": [queue], "wait": 0}
        task = httpx.post(f"{server.base_url}/api/v1/tasks/claim", json=claim, headers=creds)
        assert task.status_code == 200, task.text
        done = httpx.post(
            f"{server.base_url}/api/v1/tasks/{task.json()['id']}/complete",
            json={"node": node, "attempt": 1, "result": result},
            headers=creds,
        )
        assert done.status_code == 200, done.text
        task_id: str = task.json()["id"]
        return task_id

    vm_id = submit(server, queue, "runner")["payload"]["vm_id"]
    claim_and_complete({"vm_id": vm_id, "status": "running", "driver": "process"})
    payload = {"vm_id": vm_id, "command": "echo", "args": ["hello", "console"]}
    body: dict[str, Any] = {"type": "vm:execute", "queue": queue, "payload": payload}
    api(server, "POST", "/api/v1/tasks", admin, json=body)
    now = time.time()
    run: dict[str, Any] = {**payload, "exit_code": 0, "stdout": "hello console\n", "stderr": ""}
    run.update(started_at=now - 0.2, finished_at=now)
    return vm_id, claim_and_complete(run)


# -- reading -----------------------------------------------------------------------------


def test_a_viewer_sees_the_queue_and_cannot_act(server: RunningServer) -> None:
    queue = unique("viewq")
    task = submit(server, queue)
    with signed_in(server.base_url, server.token("viewer")) as client:
        page = client.get("/ui/tasks", params={"queue": queue})
        assert page.status_code == 200, page.text
        assert f'data-task="{task["id"]}"' in page.text
        assert re.search(r'data-state="pending"[^>]*>.*?class="count">\d+<', page.text, re.S)
        submit_button = re.search(r"<button type=\"submit\" [^>]*>Submit task", page.text)
        assert submit_button and DISABLED in submit_button.group(0)
        cancel_button = re.search(r'aria-label="Cancel task [^"]+" ([^>]*)>', page.text)
        assert cancel_button and DISABLED in cancel_button.group(1)
        detail = client.get(f"/ui/tasks/{task['id']}")
        assert detail.status_code == 200
        assert "Cancel task</button>" in detail.text and DISABLED in detail.text
        # forcing it: the API refuses, the error page says why, nothing changes
        csrf = csrf_of(client)
        forced = client.post(f"/ui/tasks/{task['id']}/cancel", data={"csrf": csrf})
        assert forced.status_code == 403 and "<title>Error 403" in forced.text
        made = client.post(
            "/ui/tasks", data={"csrf": csrf, "type": "vm:create", "name": "x", "queue": queue}
        )
        assert made.status_code == 403
    assert [t["state"] for t in in_queue(server, queue)] == ["pending"]


def test_the_queue_is_filtered_and_paged_in_the_query_string(server: RunningServer) -> None:
    queue = unique("pageq")
    ids = [submit(server, queue, f"b{n}")["id"] for n in range(3)]
    with signed_in(server.base_url, server.token("viewer")) as client:
        first = client.get("/ui/tasks", params={"queue": queue, "limit": 2})
        assert first.status_code == 200
        shown = re.findall(r'data-task="([^"]+)"', first.text)
        assert shown == [ids[2], ids[1]]
        older = re.search(r'<a href="([^"]+)" rel="next">Older</a>', first.text)
        assert older, first.text
        link = older.group(1).replace("&amp;", "&")
        assert link == f"/ui/tasks?queue={queue}&before={ids[1]}"
        second = client.get(link + "&limit=2")
        assert re.findall(r'data-task="([^"]+)"', second.text) == [ids[0]]
        assert 'rel="next"' not in second.text and ">Newest</a>" in second.text
        none = client.get("/ui/tasks", params={"queue": queue, "state": "succeeded"})
        assert "No task matches." in none.text
        bad = client.get("/ui/tasks", params={"state": "sleeping"})
        assert bad.status_code in (400, 422) and "<title>Error" in bad.text


def test_a_task_shows_its_attempts_output_and_timing(server: RunningServer) -> None:
    vm_id, task_id = sandbox_with_a_run(server)
    with signed_in(server.base_url, server.token("viewer")) as client:
        page = client.get(f"/ui/tasks/{task_id}")
        assert page.status_code == 200, page.text
        text = re.sub(r"\s+", " ", page.text)
        assert "state-succeeded" in text
        assert "<dt>Attempts</dt><dd>1 of at most 3</dd>" in text
        assert "hello console" in text  # the result
        assert f'href="/ui/sandboxes/{vm_id}"' in text
        assert re.search(r"<dt>Ran</dt><dd>[\d.]+ s</dd>", text)
        assert 'action="/ui/tasks/' not in text  # a finished task has no cancel button
        # each attempt from the queue's log: its node, how long it took, how it ended
        attempt = re.search(r'<tr data-attempt="1">(.*?)</tr>', text)
        assert attempt, text
        assert "tasknode" in attempt.group(1) and "state-succeeded" in attempt.group(1)
        assert re.search(r"<td>[\d.]+ s</td>", attempt.group(1))


def test_sandboxes_list_their_executions(server: RunningServer) -> None:
    vm_id, task_id = sandbox_with_a_run(server)
    with signed_in(server.base_url, server.token("viewer")) as client:
        tasks = client.get("/ui/tasks")
        assert 'href="/ui/sandboxes"' in tasks.text
        listed = client.get("/ui/sandboxes")
        assert f'data-sandbox="{vm_id}"' in listed.text
        page = client.get(f"/ui/sandboxes/{vm_id}")
        assert page.status_code == 200, page.text
        assert "<code>echo hello console</code>" in page.text
        assert "hello console\n</pre>" in page.text
        assert f'href="/ui/tasks/{task_id}"' in page.text


def test_another_tenants_task_and_sandbox_are_not_found(server: RunningServer) -> None:
    vm_id, task_id = sandbox_with_a_run(server)
    with signed_in(server.base_url, server.new_tenant()) as client:
        for path in (f"/ui/tasks/{task_id}", f"/ui/sandboxes/{vm_id}"):
            page = client.get(path)
            assert page.status_code == 404, path
            assert "<title>Error 404" in page.text
            assert "hello console" not in page.text and "runner" not in page.text
        assert f'data-task="{task_id}"' not in client.get("/ui/tasks").text
        assert vm_id not in client.get("/ui/sandboxes").text
        csrf = csrf_of(client)
        cancel = client.post(f"/ui/tasks/{task_id}/cancel", data={"csrf": csrf})
        assert cancel.status_code == 404
        # the same answer as for a task that never existed
        assert client.get("/ui/tasks/no-such-task").status_code == 404


# -- acting ------------------------------------------------------------------------------


def test_an_operator_submits_and_cancels_from_the_forms(server: RunningServer) -> None:
    queue = unique("formq")
    with signed_in(server.base_url, server.token("operator")) as client:
        csrf = csrf_of(client, "/ui/tasks")
        form = {"csrf": csrf, "type": "vm:create", "name": "from-the-form", "queue": queue}
        made = client.post("/ui/tasks", data={**form, "priority": "7", "max_retry": "1"})
        assert made.status_code == 303, made.text
        assert made.headers["location"].startswith("/ui/tasks?done=Submitted%20task")
        [task] = in_queue(server, queue)
        assert (task["payload"]["name"], task["priority"], task["max_retry"]) == (
            "from-the-form",
            7,
            1,
        )
        listed = client.get(made.headers["location"])
        assert "Submitted task" in listed.text and f'data-task="{task["id"]}"' in listed.text
        back = f"/ui/tasks?queue={queue}"
        cancelled = client.post(f"/ui/tasks/{task['id']}/cancel", data={"csrf": csrf, "next": back})
        assert cancelled.status_code == 303
        assert cancelled.headers["location"].startswith(f"/ui/tasks?queue={queue}&done=")
        assert in_queue(server, queue)[0]["state"] == "cancelled"
        # a foreign "next" is not followed
        again = submit(server, queue)
        away = client.post(
            f"/ui/tasks/{again['id']}/cancel", data={"csrf": csrf, "next": "//evil.example/"}
        )
        assert away.headers["location"].startswith(f"/ui/tasks/{again['id']}?done=")


def test_submit_and_cancel_without_csrf_change_nothing(server: RunningServer) -> None:
    queue = unique("csrfq")
    task = submit(server, queue)
    with signed_in(server.base_url, server.token("admin")) as client:
        form = {"type": "vm:create", "name": "x", "queue": queue}
        assert client.post("/ui/tasks", data=form).status_code == 403
        assert client.post("/ui/tasks", data={**form, "csrf": "forged"}).status_code == 403
        refused = client.post(f"/ui/tasks/{task['id']}/cancel", data={"csrf": "forged"})
        assert refused.status_code == 403 and "CSRF" in refused.text
    assert [(t["id"], t["state"]) for t in in_queue(server, queue)] == [(task["id"], "pending")]


def test_bad_input_on_the_submit_form_shows_the_apis_message(server: RunningServer) -> None:
    queue = unique("badq")
    vm_id, _ = sandbox_with_a_run(server)
    with signed_in(server.base_url, server.token("operator")) as client:
        csrf = csrf_of(client, "/ui/tasks")
        base = {"csrf": csrf, "queue": queue}
        empty = client.post(
            "/ui/tasks", data={**base, "type": "vm:execute", "vm_id": vm_id, "command": " "}
        )
        assert empty.status_code == 400, empty.text
        assert "invalid vm:execute payload: command" in empty.text
        too_high = client.post(
            "/ui/tasks", data={**base, "type": "vm:create", "name": "x", "priority": "500"}
        )
        assert too_high.status_code == 400
        assert "priority" in too_high.text and "100" in too_high.text
        not_a_number = client.post(
            "/ui/tasks", data={**base, "type": "vm:create", "name": "x", "priority": "high"}
        )
        assert not_a_number.status_code == 400 and "priority" in not_a_number.text
        unknown = client.post("/ui/tasks", data={**base, "type": "vm:teleport"})
        assert unknown.status_code == 400 and "unknown task type" in unknown.text
    assert in_queue(server, queue) == []


# -- in a browser ------------------------------------------------------------------------


def test_submit_and_cancel_a_task_in_a_browser(server: RunningServer, browser: Browser) -> None:
    queue = unique("browserq")
    vm_id, run_task = sandbox_with_a_run(server)
    context = new_console(browser)
    page = context.new_page()
    sign_in(page, server.base_url, server.token("operator"), "/ui/tasks")
    expect(page.locator("h1")).to_have_text("Tasks")
    page.select_option("#s-type", "vm:create")
    page.fill("#s-name", "browser-box")
    page.fill("#s-queue", queue)
    page.fill("#s-priority", "9")
    page.click("form.submit-task button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("Submitted task")
    [task] = in_queue(server, queue)
    row = page.locator(f'tr[data-task="{task["id"]}"]')
    expect(row.locator("[data-testid=task-state]")).to_have_text("pending")
    expect(page.locator("body")).to_have_attribute("data-live", "live")
    assert axe_violations(page) == []
    screenshot(page, "tasks")

    # from elsewhere (the API, as the CLI would): the open page follows without a reload
    other = submit(server, queue, "from-the-cli")
    live_row = page.locator(f'tr[data-task="{other["id"]}"]')
    expect(live_row.locator("[data-testid=task-state]")).to_have_text("pending")
    api(server, "POST", f"/api/v1/tasks/{other['id']}/cancel", server.admin_token)
    expect(live_row.locator("[data-testid=task-state]")).to_have_text("cancelled")
    expect(page.locator(".flash")).to_contain_text("Submitted task")  # still the same page

    row.get_by_role("button", name=f"Cancel task {task['id']}").click()
    expect(page.locator(".flash")).to_contain_text("cancelled")
    row = page.locator(f'tr[data-task="{task["id"]}"]')
    expect(row.locator("[data-testid=task-state]")).to_have_text("cancelled")
    assert {t["state"] for t in in_queue(server, queue)} == {"cancelled"}

    page.goto(f"{server.base_url}/ui/tasks/{run_task}")
    expect(page.locator("[data-testid=task-state]")).to_have_text("succeeded")
    assert axe_violations(page) == []
    screenshot(page, "task")
    page.click(f"a[href='/ui/sandboxes/{vm_id}']")
    expect(page.locator("h1")).to_contain_text(vm_id)
    page.click("details summary")
    expect(page.locator("details pre").first).to_contain_text("hello console")
    assert axe_violations(page) == []
    page.goto(f"{server.base_url}/ui/sandboxes")
    expect(page.locator(f'tr[data-sandbox="{vm_id}"]')).to_be_visible()
    assert axe_violations(page) == []
    context.close()


def test_the_tasks_page_on_a_phone(server: RunningServer, browser: Browser) -> None:
    submit(server, unique("phoneq"))
    context = new_console(browser, width=390, height=844)
    page = context.new_page()
    sign_in(page, server.base_url, server.token("viewer"), "/ui/tasks")
    expect(page.locator("h1")).to_have_text("Tasks")
    expect(page.get_by_role("button", name="Submit task")).to_be_disabled()
    assert axe_violations(page) == []
    wide = page.evaluate("document.documentElement.scrollWidth")
    assert wide <= 390, f"the page scrolls sideways: {wide} px"
    context.close()


def test_the_pages_have_no_inline_script_or_style(server: RunningServer) -> None:
    vm_id, task_id = sandbox_with_a_run(server)
    with signed_in(server.base_url, server.token("operator")) as client:
        for path in (
            "/ui/tasks",
            f"/ui/tasks/{task_id}",
            "/ui/sandboxes",
            f"/ui/sandboxes/{vm_id}",
        ):
            answer = client.get(path)
            assert answer.status_code == 200, path
            html = answer.text
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
            assert " style=" not in html and "<style" not in html, path
            assert not re.search(r"<[^>]+\son[a-z]+=", html), path
