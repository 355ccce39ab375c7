"""The console against real processes, driven in Chromium the way a user works.

A real server and two nodes: sign in, deploy from the CLI and watch the app
appear, scale from the UI, run the fire drill from the UI and see the
controller's drain, the migrations and their reason appear, submit and cancel a
task, and check that a viewer can look at all of it and change nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import axe_violations, chromium, new_console, screenshot, sign_in
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-python"


def _instances(page: Page, app: str) -> str:
    return page.locator(f"tr[data-app='{app}'] [data-testid=app-instances]").inner_text()


def test_a_user_runs_the_cluster_from_the_console(cluster: Cluster) -> None:
    cluster.env["AETHER_CONTROLLER_UNDRAIN_AFTER"] = "2"
    cluster.start_server()
    cluster.start_node("n1")
    cluster.start_node("n2")
    viewer = str(cluster.cli_json("tokens", "create", "--role", "viewer")["token"])
    api = cluster.api

    with chromium() as browser:
        context = new_console(browser)
        page = context.new_page()
        sign_in(page, api, cluster.admin_token)
        expect(page.locator("tr[data-node='n1']")).to_be_visible(timeout=15_000)
        expect(page.locator("tr[data-node='n2']")).to_be_visible()

        # deployed from the CLI: the open overview shows it without a reload
        cluster.cli_json("deploy", str(EXAMPLE), "--instances", "1")
        row = page.locator("tr[data-app='hello-python'] [data-testid=app-instances]")
        expect(row).to_have_text("1 / 1", timeout=30_000)

        # scale from the app page; the page follows the instances as they start
        page.goto(f"{api}/ui/apps/hello-python")
        page.fill("#scale-instances", "2")
        page.click("form[action='/ui/apps/hello-python/scale'] button[type=submit]")
        expect(page.locator("[data-testid=app-instances]")).to_have_text("2 / 2", timeout=30_000)
        wait_for(lambda: len(cluster.active("hello-python")) == 2, 30, "2 ACTIVE")
        screenshot(page, "e2e-app")

        # the fire drill, from the risk page: the node turns CRITICAL, the controller
        # drains it and the migrations appear with their reason
        drilled = cluster.active("hello-python")[0]["node"]
        page.goto(f"{api}/ui/risk")
        page.click(f"button[aria-label='Start the fire drill on {drilled}']")
        node_row = page.locator(f"tr[data-node='{drilled}']")
        expect(node_row.locator("[data-testid=risk-status]")).to_contain_text(
            "CRITICAL", timeout=15_000
        )
        expect(node_row.locator("[data-testid=risk-cause]")).to_contain_text(
            "Cloud Provider Signal"
        )
        drain = page.locator("tr[data-decision]", has_text="drain").first
        expect(drain).to_contain_text("Cloud Provider Signal", timeout=30_000)
        expect(drain).to_contain_text("applied")
        migration = page.locator("tr[data-migration]").first
        expect(migration).to_contain_text(drilled, timeout=30_000)
        expect(migration).to_contain_text("hello-python")
        wait_for(
            lambda: (
                all(i["node"] != drilled for i in cluster.active("hello-python"))
                and len(cluster.active("hello-python")) == 2
            ),
            90,
            f"every instance off {drilled}",
        )
        screenshot(page, "e2e-drill")
        page.click(f"button[aria-label='Stop the fire drill on {drilled}']")
        expect(node_row.locator("[data-testid=risk-status]")).to_contain_text("LOW", timeout=15_000)

        # a task: submitted from the form, cancelled from the list
        page.goto(f"{api}/ui/tasks")
        page.select_option("#s-type", "job:run")
        page.fill("#s-app", "hello-python")
        page.fill("#s-command", "sleep")
        page.fill("#s-args", "30")
        page.fill("#s-delay", "600")  # scheduled: it waits, so it can be cancelled
        page.click("form.submit-task button[type=submit]")
        expect(page.locator(".flash.ok")).to_be_visible()
        task_row = page.locator("tr[data-task]").first
        expect(task_row.locator("[data-testid=task-state]")).to_have_text("scheduled")
        task_row.locator("button", has_text="Cancel").click()
        expect(
            page.locator("tr[data-task]").first.locator("[data-testid=task-state]")
        ).to_have_text("cancelled", timeout=10_000)
        context.close()

        # a viewer sees all of it and can act on nothing
        context = new_console(browser)
        page = context.new_page()
        sign_in(page, api, viewer)
        expect(page.locator("tr[data-app='hello-python']")).to_be_visible()
        for path, action in (
            ("/ui/apps/hello-python", "form[action='/ui/apps/hello-python/scale'] button"),
            ("/ui/risk", f"button[aria-label='Start the fire drill on {drilled}']"),
            ("/ui/tasks", "form.submit-task button[type=submit]"),
            (f"/ui/nodes/{drilled}", "button:has-text('rain')"),
        ):
            page.goto(api + path)
            buttons = page.locator(action)
            assert buttons.count() >= 1, path
            for i in range(buttons.count()):
                expect(buttons.nth(i)).to_be_disabled()
            assert axe_violations(page) == [], path
        # forced anyway (the form posted without the button): the API refuses it
        answer = page.request.post(
            f"{api}/ui/apps/hello-python/scale",
            form={"instances": "5", "csrf": _csrf(page)},
        )
        assert answer.status == 403
        assert "viewer" in answer.text() and "may not do this" in answer.text()
        assert len(cluster.active("hello-python")) == 2
        context.close()


def _csrf(page: Page) -> str:
    token = page.locator("meta[name=csrf-token]").get_attribute("content")
    assert token
    return token
