"""The dashboard page in a real browser: Debian's headless Chromium driven by Playwright, against
one real 3-node cluster (tokens on, every node serving the dashboard with ``--http``), the page
served by a FOLLOWER.

Each test polls the page with a deadline (Playwright's ``expect`` / ``wait_for_*``), saves a
screenshot per step under the artifacts directory (``RAFTMESH_TEST_ARTIFACTS``, default
``<tmp>/artifacts``; printed), and the module ends by killing the leader (its own pid), so it
runs last. Skips only where no Chromium can be found; ``RAFTMESH_REQUIRE_BROWSER=1`` (CI) makes
that a failure.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from raftmesh.client import DAG, Client
from raftmesh.client._security import Credentials
from raftmesh.localcluster import LocalCluster, wait_until
from raftmesh.security.tokens import add_token

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SUCCEEDED_FILL = "rgb(34, 160, 91)"  # --succeeded in static/style.css
TIMEOUT_MS = 30_000


def _chromium() -> str | None:
    for path in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def _missing(reason: str) -> None:
    if os.environ.get("RAFTMESH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"RAFTMESH_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


CHROMIUM = _chromium()
try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
except ImportError:  # the test extra is not installed
    sync_playwright = None


@dataclass
class Dash:
    cluster: LocalCluster
    tokens: dict[str, str]
    urls: dict[str, str]
    """node id -> the dashboard's base URL on that node"""
    browser: Any
    artifacts: pathlib.Path
    admin: Client
    errors: dict[int, list[str]]

    def follower(self) -> str:
        leader = self.cluster.leader()
        return next(i for i in self.cluster.nodes if i != leader and self.cluster.nodes[i].alive)

    def shot(self, page: Page, name: str) -> None:
        path = self.artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")

    def open(self, node: str, token: str, hash_: str = "#/cluster") -> tuple[BrowserContext, Page]:
        """A fresh browser context on ``node``'s dashboard, the token entered (each tab has its
        own sessionStorage, so each is given the token)."""
        ctx = self.browser.new_context(viewport={"width": 1500, "height": 950})
        return ctx, self.tab(ctx, node, token, hash_)

    def tab(self, ctx: BrowserContext, node: str, token: str, hash_: str) -> Page:
        page = ctx.new_page()
        errors = self.errors.setdefault(id(page), [])
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(self.urls[node] + "/" + hash_)
        page.get_by_test_id("token-input").fill(token)
        page.get_by_test_id("token-save").click()
        expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "live", timeout=TIMEOUT_MS)
        return page

    def page_errors(self, page: Page) -> list[str]:
        """Uncaught exceptions the page's scripts raised."""
        return self.errors.get(id(page), [])


@pytest.fixture(scope="module")
def dash(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    if sync_playwright is None:
        _missing("playwright is not installed (pip install -e '.[test]')")
    if CHROMIUM is None:
        _missing("no Chromium found (/usr/bin/chromium; Debian: apt-get install chromium)")
    base = tmp_path_factory.mktemp("dashboard")
    artifacts = pathlib.Path(os.environ.get("RAFTMESH_TEST_ARTIFACTS") or base / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    where = f"dashboard browser test artifacts (screenshots): {artifacts}"
    print(where)
    # shown even when pytest captures output (a passing run prints no captured output)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(where)
    path = str(base / "tokens.yaml")
    tokens = {who: add_token(path, who, role)[1] for who, role in (("admin", "admin"), ("reader", "reader"))}
    # down after 3 s (default 5): the leader-kill test waits for the page to show its node down
    down = ["--node-down-after", "3"]
    cluster = LocalCluster(
        3, base_dir=str(base / "cluster"), extra_args=["--tokens-file", path, *down], http=True
    )
    urls = {nid: f"http://{node.http}" for nid, node in cluster.nodes.items()}
    failed_before = request.session.testsfailed
    with pytest.MonkeyPatch.context() as mp:
        # LocalCluster's own status calls (leader, readiness) read RAFTMESH_TOKEN
        mp.setenv("RAFTMESH_TOKEN", tokens["admin"])
        try:
            cluster.start()
            admin = cluster.client(credentials=Credentials(token=tokens["admin"]))
            with sync_playwright() as pw:
                browser: Browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    yield Dash(cluster, tokens, urls, browser, artifacts, admin, {})
                finally:
                    browser.close()
        finally:
            if request.session.testsfailed > failed_before:
                for n in cluster.nodes.values():
                    print(f"----- {n.id} {n.log_path}")
                    print(pathlib.Path(n.log_path).read_text(errors="replace")[-4000:])
            cluster.close()


def _task(page: Page, task_id: str) -> Any:
    return page.locator(f'#dag g.task[data-task-id="{task_id}"]')


def _goto_run(page: Page, run_id: str) -> None:
    page.evaluate("id => { location.hash = '#/runs/' + encodeURIComponent(id); }", run_id)
    expect(page.get_by_test_id("run-id")).to_have_text(run_id, timeout=TIMEOUT_MS)


def test_the_page_from_a_follower_shows_the_leader_and_the_members(dash: Dash) -> None:
    leader = dash.cluster.leader()
    follower = dash.follower()
    ctx, page = dash.open(follower, dash.tokens["admin"])
    try:
        expect(page.get_by_test_id("leader")).to_have_text(str(leader), timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("served-by")).to_have_text(follower, timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("whoami")).to_contain_text("admin", timeout=TIMEOUT_MS)
        for nid in dash.cluster.nodes:
            expect(page.get_by_test_id(f"member-up-{nid}")).to_have_text("up", timeout=TIMEOUT_MS)
        dash.shot(page, "01-cluster")
        # The static files need no token, but the API does.
        status = page.evaluate("async () => (await fetch('/api/v1/cluster')).status")
        assert status == 401
        assert dash.page_errors(page) == []
    finally:
        ctx.close()


def test_a_page_without_a_token_says_once_where_to_paste_one(dash: Dash) -> None:
    ctx = dash.browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = ctx.new_page()
        missing: list[str] = []  # e.g. /favicon.ico, which browsers ask for unless the page names one
        page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
        page.goto(dash.urls[dash.follower()] + "/#/cluster")
        expect(page.get_by_test_id("conn-state")).to_have_attribute(
            "data-state", "refused", timeout=TIMEOUT_MS
        )
        expect(page.get_by_test_id("notice")).to_have_text(
            "this cluster needs a token: paste one in the box at the top right", timeout=TIMEOUT_MS
        )
        assert page.evaluate("() => document.body.innerText.split('needs a token').length - 1") == 1
        # the header stays one line (the leader/term/token row is ~41 px high)
        assert page.locator("header").evaluate("e => e.getBoundingClientRect().height") < 60
        dash.shot(page, "01b-no-token")
        assert missing == []
    finally:
        ctx.close()


def test_a_submitted_run_is_drawn_and_its_tasks_turn_green(dash: Dash) -> None:
    ctx, page = dash.open(dash.follower(), dash.tokens["admin"], "#/runs")
    try:
        dag = DAG("drawn")
        slow = dag.task("slow", "sleep", input={"seconds": 3})
        left = dag.task("left", "echo", input={"side": "<b>not html</b>"}, deps=[slow])
        right = dag.task("right", "sum", input={"value": 2}, deps=[slow])
        dag.task("join", "echo", deps=[left, right])
        run_id = dash.admin.submit(dag)
        # The runs list is live: the new run appears without a reload, and opens the run.
        row = page.locator(f'tr[data-run-id="{run_id}"]')
        expect(row).to_be_visible(timeout=TIMEOUT_MS)
        dash.shot(page, "02-runs-list")
        row.get_by_role("link").click()
        expect(page.get_by_test_id("run-id")).to_have_text(run_id, timeout=TIMEOUT_MS)
        # Live: `slow` is drawn running (3 s of sleep), then every task turns the succeeded colour.
        expect(_task(page, "slow")).to_have_attribute("data-status", "RUNNING", timeout=TIMEOUT_MS)
        expect(_task(page, "join")).not_to_have_attribute("data-status", "SUCCEEDED")
        dash.shot(page, "03-run-running")
        for tid in ("slow", "left", "right", "join"):
            expect(_task(page, tid)).to_have_attribute("data-status", "SUCCEEDED", timeout=TIMEOUT_MS)
            fill = _task(page, tid).locator("rect").evaluate("r => getComputedStyle(r).fill")
            assert fill == SUCCEEDED_FILL, (tid, fill)
        expect(page.get_by_test_id("run-status")).to_have_text("SUCCEEDED", timeout=TIMEOUT_MS)
        # A task's attempts and output: an API string shows as text, never as markup.
        _task(page, "left").click()
        expect(page.get_by_test_id("task-output")).to_contain_text("<b>not html</b>", timeout=TIMEOUT_MS)
        assert page.locator("#task-panel b").count() == 0
        expect(page.get_by_test_id("attempts")).to_contain_text("SUCCEEDED", timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("audit")).to_contain_text("left", timeout=TIMEOUT_MS)
        dash.shot(page, "04-run-succeeded")
        # The runs list's status filter.
        page.get_by_test_id("nav-runs").click()
        row = page.locator(f'tr[data-run-id="{run_id}"]')
        expect(row).to_contain_text("SUCCEEDED", timeout=TIMEOUT_MS)
        page.get_by_test_id("filter-status").select_option("FAILED")
        expect(row).to_have_count(0)
        page.get_by_test_id("filter-status").select_option("SUCCEEDED")
        expect(row).to_have_count(1)
        assert dash.page_errors(page) == []
    finally:
        ctx.close()


def test_the_drawing_has_the_dags_dependency_edges(dash: Dash) -> None:
    dag = DAG("edges")
    a = dag.task("a", "echo", input=1)
    b = dag.task("b", "echo", deps=[a])
    c = dag.task("c", "echo", deps=[a])
    dag.task("d", "echo", deps=[b, c])
    run_id = dash.admin.submit(dag)
    ctx, page = dash.open(dash.follower(), dash.tokens["admin"])
    try:
        _goto_run(page, run_id)
        expect(_task(page, "d")).to_be_visible(timeout=TIMEOUT_MS)
        # a->b, a->c, b->d, c->d; and each task shows its agent
        expect(page.locator("#dag path.edge.dep")).to_have_count(4, timeout=5_000)
        expect(_task(page, "d").locator("text.tsub")).to_have_text("echo", timeout=5_000)
    finally:
        ctx.close()


def test_map_instances_and_replicas_appear_in_the_drawing_as_they_are_made(dash: Dash) -> None:
    dag = DAG("fan")
    items = dag.task("items", "sleep", input={"seconds": 1, "list": [1, 2, 3]})
    pick = dag.task("pick", "echo", input=["a", "b", "c"], deps=[items])
    dag.task("each", "echo", map=pick)
    dag.task("vote", "echo", input="same", replicas=3, fusion="vote", deps=[items])
    run_id = dash.admin.submit(dag)
    ctx, page = dash.open(dash.follower(), dash.tokens["admin"])
    try:
        _goto_run(page, run_id)
        expect(_task(page, "items")).to_be_visible(timeout=TIMEOUT_MS)
        for tid in ("each[0]", "each[1]", "each[2]", "vote#0", "vote#1", "vote#2"):
            expect(_task(page, tid)).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("run-status")).to_have_text("SUCCEEDED", timeout=TIMEOUT_MS)
        for tid in ("each", "each[2]", "vote"):
            expect(_task(page, tid)).to_have_attribute("data-status", "SUCCEEDED", timeout=TIMEOUT_MS)
        assert _task(page, "each[1]").get_attribute("data-origin") == "map"
        assert _task(page, "vote#1").get_attribute("data-origin") == "replica"
        # each instance and replica hangs from its parent by a dashed edge
        assert page.locator("#dag path.edge.child").count() >= 6
        dash.shot(page, "05-map-and-replicas")
        assert dash.page_errors(page) == []
    finally:
        ctx.close()


def _approval_dag(name: str) -> DAG:
    dag = DAG(name)
    plan = dag.task("plan", "echo", input="rollout plan")
    deploy = dag.task("deploy", "echo", deps=[plan], approval={"prompt": "Deploy to prod?"})
    dag.task("after", "echo", deps=[deploy])
    return dag


def test_an_approval_clicked_in_the_page_resumes_the_run(dash: Dash) -> None:
    run_id = dash.admin.submit(_approval_dag("approve-me"))
    ctx, page = dash.open(dash.follower(), dash.tokens["admin"])
    try:
        _goto_run(page, run_id)
        expect(_task(page, "deploy")).to_have_attribute("data-status", "WAITING_APPROVAL", timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("run-approvals")).to_contain_text("deploy", timeout=TIMEOUT_MS)
        _task(page, "deploy").click()
        expect(page.get_by_test_id("gate")).to_contain_text("Deploy to prod?", timeout=TIMEOUT_MS)
        # Pause and resume from the page while the gate is open.
        page.get_by_test_id("btn-pause").click()
        expect(page.get_by_test_id("run-status")).to_have_text("PAUSED", timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("action-result")).to_have_text("paused", timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("btn-resume")).to_be_enabled(timeout=TIMEOUT_MS)
        page.get_by_test_id("btn-resume").click()
        expect(page.get_by_test_id("run-status")).to_have_text("RUNNING", timeout=TIMEOUT_MS)
        page.get_by_test_id("approve-comment").fill("ship it")
        expect(page.get_by_test_id("btn-approve")).to_be_enabled(timeout=TIMEOUT_MS)
        dash.shot(page, "06-approval-waiting")
        page.get_by_test_id("btn-approve").click()
        expect(_task(page, "after")).to_have_attribute("data-status", "SUCCEEDED", timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("run-status")).to_have_text("SUCCEEDED", timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("action-result")).to_have_text(
            re.compile(r"^approved deploy \(gate \d+\)$"), timeout=TIMEOUT_MS
        )
        # a message never widens the page
        assert page.evaluate(
            "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
        dash.shot(page, "07-approval-approved")
        gate = dash.admin.get(run_id).tasks["deploy"].gate
        assert gate is not None
        assert (gate.decision, gate.by, gate.comment) == ("approved", "token:admin", "ship it")
        # Rerun an ended task: the finished run reopens, the page listens again and shows the
        # task's second attempt.
        _task(page, "after").click()
        expect(page.get_by_test_id("attempts").locator("tr")).to_have_count(2, timeout=TIMEOUT_MS)
        page.get_by_test_id("btn-rerun").click()
        expect(page.get_by_test_id("attempts").locator("tr")).to_have_count(3, timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("action-result")).to_have_text(re.compile(r"^rerun after: attempt 2\b"))
        expect(page.get_by_test_id("run-status")).to_have_text("SUCCEEDED", timeout=TIMEOUT_MS)
        assert [a.attempt for a in dash.admin.get(run_id).tasks["after"].history] == [1, 2]
    finally:
        ctx.close()


def test_a_reader_sees_the_buttons_disabled_and_the_api_refuses_it(dash: Dash) -> None:
    run_id = dash.admin.submit(_approval_dag("read-only"))
    ctx, page = dash.open(dash.follower(), dash.tokens["reader"])
    try:
        expect(page.get_by_test_id("whoami")).to_contain_text("reader", timeout=TIMEOUT_MS)
        _goto_run(page, run_id)
        expect(_task(page, "deploy")).to_have_attribute("data-status", "WAITING_APPROVAL", timeout=TIMEOUT_MS)
        _task(page, "deploy").click()
        for button in ("btn-cancel", "btn-pause", "btn-approve", "btn-reject"):
            expect(page.get_by_test_id(button)).to_be_disabled(timeout=TIMEOUT_MS)
            expect(page.get_by_test_id(button)).to_have_attribute("data-allowed", "false")
        dash.shot(page, "08-reader-disabled")
        # The API refuses the reader whatever the page shows (the gRPC API's own role check).
        answer = page.evaluate(
            """async (path) => {
                const r = await fetch(path, {method: 'POST', body: '{}', headers: {
                    'Content-Type': 'application/json',
                    Authorization: 'Bearer ' + sessionStorage.getItem('raftmesh.token')}});
                return {status: r.status, body: await r.json()};
            }""",
            f"/api/v1/runs/{run_id}/tasks/deploy/approve",
        )
        assert answer["status"] == 403, answer
        assert answer["body"]["error"]["code"] == "PERMISSION_DENIED", answer
        assert dash.admin.get(run_id).tasks["deploy"].status == "WAITING_APPROVAL"
    finally:
        ctx.close()
        dash.admin.cancel(run_id, "test over")


def test_the_coordination_view_lists_locks_keys_and_dead_letters(dash: Dash) -> None:
    dash.admin.kv.put("dash/key", {"markup": "<i>text</i>"})
    granted, token, _ = dash.admin.locks.acquire("dash/lock", owner="dash-test", ttl_s=60)
    assert granted
    dag = DAG("dead")
    dag.task("doomed", "fail", input={"times": 5}, retries=0)
    run_id = dash.admin.submit(dag)
    wait_until(lambda: dash.admin.get(run_id).status == "FAILED", 30, "the run to fail")
    ctx, page = dash.open(dash.follower(), dash.tokens["admin"], "#/coord")
    try:
        expect(page.locator('tr[data-lock="dash/lock"]')).to_contain_text(
            f"dash-test (exclusive, token {token})"
        )
        page.get_by_test_id("kv-prefix").fill("dash/")
        page.get_by_test_id("kv-load").click()
        expect(page.locator('tr[data-key="dash/key"]')).to_contain_text('"<i>text</i>"', timeout=TIMEOUT_MS)
        assert page.locator("#kv-body i").count() == 0
        expect(page.get_by_test_id("dead-tasks")).to_contain_text(run_id, timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("dead-tasks")).to_contain_text("doomed")
        dash.shot(page, "09-coordination")
        assert dash.page_errors(page) == []
    finally:
        ctx.close()
        dash.admin.locks.release("dash-test", "dash/lock", token)


def _responsive(page: Page, within_ms: int = 5000) -> None:
    """The page's main thread answers within ``within_ms`` (a hung tab would time out)."""
    page.wait_for_function("() => document.readyState === 'complete'", polling="raf", timeout=within_ms)


def test_a_10000_task_run_renders_a_summary_without_hanging_the_page(dash: Dash) -> None:
    dag = DAG("wide")
    root = dag.task("root", "echo", input=0)
    for i in range(9_999):
        dag.task(f"t{i}", "echo", input=i, deps=[root])
    run_id = dash.admin.submit(dag)
    ctx, page = dash.open(dash.follower(), dash.tokens["admin"])
    try:
        _goto_run(page, run_id)
        expect(page.get_by_test_id("summary")).to_be_visible(timeout=60_000)
        expect(page.get_by_test_id("count-total")).to_have_text("10000 tasks", timeout=TIMEOUT_MS)
        assert page.locator("#dag").count() == 0
        dash.shot(page, "10-large-run-summary")
        # While task events stream in, the page keeps answering and its counts move. The
        # predicate runs in the page at each animation frame: a hung tab would time out.
        first = int(page.get_by_test_id("progress").get_attribute("data-ended") or 0)
        for step in range(1, 4):
            page.wait_for_function(
                """n => Number(document.querySelector('[data-testid=progress]').dataset.ended) >= n""",
                arg=min(10_000, first + 300 * step),
                polling="raf",
                timeout=60_000,
            )
            _responsive(page)
        dash.shot(page, "11-large-run-progress")
        dash.admin.cancel(run_id, "enough")
        expect(page.get_by_test_id("run-status")).not_to_have_text("RUNNING", timeout=60_000)
        _responsive(page)
        dash.shot(page, "12-large-run-ended")
    finally:
        ctx.close()


def test_the_page_recovers_when_the_leader_is_killed(dash: Dash) -> None:
    old = dash.cluster.leader()
    assert old is not None
    follower = dash.follower()
    ctx, page = dash.open(follower, dash.tokens["admin"])
    try:
        expect(page.get_by_test_id("leader")).to_have_text(old, timeout=TIMEOUT_MS)
        # A run in flight across the failover, watched in a second tab, and a third tab served
        # by the leader itself: its streams break with it and must come back when it does.
        dag = DAG("failover")
        slow = dag.task("slow", "sleep", input={"seconds": 2}, retries=3)
        dag.task("next", "echo", deps=[slow], retries=3)
        run_id = dash.admin.submit(dag)
        run_page = dash.tab(ctx, follower, dash.tokens["admin"], "#/runs/" + run_id)
        expect(run_page.get_by_test_id("run-id")).to_have_text(run_id, timeout=TIMEOUT_MS)
        expect(run_page.locator('#dag g.task[data-task-id="slow"]')).to_be_visible(timeout=TIMEOUT_MS)
        on_leader = dash.tab(ctx, old, dash.tokens["admin"], "#/cluster")
        expect(on_leader.get_by_test_id("served-by")).to_have_text(old, timeout=TIMEOUT_MS)
        page.evaluate(
            """() => {
                window.__conn = [];
                const box = document.getElementById('conn-state');
                new MutationObserver(() => window.__conn.push(box.dataset.state)).observe(
                    box, {attributes: true, childList: true, characterData: true, subtree: true});
            }"""
        )
        started = time.monotonic()
        dash.cluster.kill(old)  # SIGKILL by the leader's own pid
        survivors = [i for i in dash.cluster.nodes if i != old]
        new = wait_until(lambda: dash.cluster.leader(survivors), 30, "a new leader among the survivors")
        expect(page.get_by_test_id("leader")).to_have_text(str(new), timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "live", timeout=TIMEOUT_MS)
        recovered_s = time.monotonic() - started
        print(
            f"page showed the new leader {new} {recovered_s:.1f} s after {old} was killed; "
            f"its connection states meanwhile: {json.dumps(page.evaluate('window.__conn'))}"
        )
        expect(page.get_by_test_id(f"member-up-{old}")).to_have_text("down", timeout=60_000)
        dash.shot(page, "13-after-leader-killed")
        # The run's stream carries on and shows the run finished.
        expect(run_page.get_by_test_id("run-status")).to_have_text("SUCCEEDED", timeout=60_000)
        expect(run_page.locator('#dag g.task[data-task-id="next"]')).to_have_attribute(
            "data-status", "SUCCEEDED", timeout=TIMEOUT_MS
        )
        dash.shot(run_page, "14-run-after-failover")
        # The tab whose node died says so, and reconnects once the node is back (same address).
        expect(on_leader.get_by_test_id("conn-state")).to_have_attribute(
            "data-state", "reconnecting", timeout=TIMEOUT_MS
        )
        dash.shot(on_leader, "15-served-by-the-killed-node")
        restarted = time.monotonic()
        dash.cluster.start_node(old)
        expect(on_leader.get_by_test_id("conn-state")).to_have_attribute("data-state", "live", timeout=60_000)
        expect(on_leader.get_by_test_id("leader")).to_have_text(str(new), timeout=TIMEOUT_MS)
        expect(on_leader.get_by_test_id(f"member-up-{old}")).to_have_text("up", timeout=60_000)
        print(
            f"the tab served by {old} was live again {time.monotonic() - restarted:.1f} s after its restart"
        )
        dash.shot(on_leader, "16-reconnected-after-restart")
        for p in (page, run_page, on_leader):
            assert dash.page_errors(p) == []
    finally:
        ctx.close()
