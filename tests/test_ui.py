"""The web console in a real browser: headless Chromium (the system's; Playwright's own download
does not work here) driven by Playwright against a real stack with tokens on (uvicorn in this
event loop, every consumer, a `noetl worker` process). Register and validate a playbook from the
page, run it, watch its timeline fill in, cancel a running one, see the registry live; then time a
1,000-step execution and a registry of 10,000 components (figures printed and written to
`ui-timings.json` in the module's tmp dir, never asserted on).

`UI_SCREENSHOTS=docs/screenshots pytest tests/test_ui.py` writes each page's screenshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
import yaml
from conftest import ConsumerTask, Db, Servers, reset_state
from helpers_execution import serve
from psycopg.rows import dict_row

from consumers.process import CONSUMER_NAMES
from noetl.bus import subjects
from noetl.bus.envelope import MSG_ID_HEADER, Command, new_request_id
from noetl.contracts.runtime import RuntimeRegistration
from noetl.facade import auth

try:
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("playwright is not installed: pip install -e '.[test]'", allow_module_level=True)

pytest.register_assert_rewrite("workers_support")
from workers_support import Workers, reset_jobs  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no system Chromium (Debian: apt-get install chromium): the web console's browser tests need one",
        allow_module_level=True,
    )

LOOPS = Path(__file__).resolve().parent.parent / "examples" / "loops.yaml"
TOKEN = "ui-operator-token-0c9d2e"
WORKER_TOKEN = "ui-worker-token-7b1a44"  # components (de)register with the worker role
SHOTS = os.environ.get("UI_SCREENSHOTS")
WAIT_MS = 30_000
LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longTasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
"""
WITH_TOKEN = f"localStorage.setItem('noetl.token', {json.dumps(TOKEN)});"


@dataclass
class Console:
    url: str
    api: httpx.AsyncClient
    browser: Browser
    db: Db
    nc: Any
    root: Path
    timings: dict[str, Any] = field(default_factory=dict)

    async def context(self, *, token: bool = True) -> BrowserContext:
        context = await self.browser.new_context(viewport={"width": 1360, "height": 860}, base_url=self.url)
        await context.add_init_script(LONG_TASKS)
        if token:
            await context.add_init_script(WITH_TOKEN)
        return context

    async def register(self, document: dict[str, Any]) -> dict[str, Any]:
        answer = await self.api.post("/api/catalog/register", json={"content": yaml.safe_dump(document)})
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def run(self, path: str, **parameters: Any) -> str:
        answer = await self.api.post("/api/executions/run", json={"path": path, "parameters": parameters})
        assert answer.status_code == 200, answer.text
        return answer.json()["execution_id"]

    def record(self, name: str, figures: dict[str, Any]) -> None:
        self.timings[name] = figures
        print(f"\n[ui timings] {name}: {json.dumps(figures)}")
        (self.root / "ui-timings.json").write_text(json.dumps(self.timings, indent=2))


def playbook(path: str, workflow: list[dict[str, Any]], **workload: Any) -> dict[str, Any]:
    return {
        "apiVersion": "noetl.io/v1",
        "kind": "Playbook",
        "metadata": {"name": path.rsplit("/", 1)[-1], "path": path},
        "workload": workload,
        "workflow": workflow,
    }


# A python step that waits until its `gate` file exists (no gate: at once): the test opens it
# when the page is watching, so what the page shows next it must have seen arrive.
GATE_CODE = """\
def main(gate):
    import os, time
    while gate and not os.path.exists(gate):
        time.sleep(0.05)
    return {"status": "success", "data": {"n": 2}}
"""


def gated(path: str) -> dict[str, Any]:
    return playbook(
        path,
        [
            {"step": "start", "next": [{"step": "wait"}]},
            {
                "step": "wait",
                "type": "python",
                "code": GATE_CODE,
                "data": {"gate": "{{ workload.gate }}"},
                "next": [{"step": "big", "when": "{{ wait.n > 1 }}"}, {"step": "small"}],
            },
            {
                "step": "big",
                "type": "python",
                "code": "def main(who):\n    return {'status': 'success', 'data': {'hello': who}}\n",
                "data": {"who": "{{ workload.who }}"},
                "next": [{"step": "end"}],
            },
            {"step": "small", "next": [{"step": "end"}]},
            {"step": "end"},
        ],
        gate="",
        who="world",
    )


@pytest.fixture(scope="module")
async def console(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    await reset_state(servers)
    await reset_jobs(servers)
    root = tmp_path_factory.mktemp("ui")
    tokens = {"operator": auth.digest(TOKEN), "worker": auth.digest(WORKER_TOKEN)}
    settings = servers.settings(api_tokens=json.dumps(tokens))
    async with contextlib.AsyncExitStack() as exits:
        consumers = ConsumerTask(list(CONSUMER_NAMES), settings)
        await consumers.start()
        exits.push_async_callback(consumers.stop)
        live = await exits.enter_async_context(serve(settings))
        conn = await psycopg.AsyncConnection.connect(servers.dsn, autocommit=True, row_factory=dict_row)
        exits.push_async_callback(conn.close)
        nc = await nats.connect(servers.nats_url, connect_timeout=5)
        exits.push_async_callback(nc.close)
        db = Db(conn)
        workers = Workers(root, servers.nats_url, db)
        exits.callback(workers.cleanup)
        await workers.started(("w-ui", "python"))
        api = await exits.enter_async_context(
            httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        )
        playwright = await exits.enter_async_context(async_playwright())
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        exits.push_async_callback(browser.close)
        yield Console(live.url, api, browser, db, nc, root)
    await reset_jobs(servers)


@pytest.fixture
async def page(console: Console) -> AsyncIterator[Page]:
    """A page with the token already entered; a script error on it fails the test."""
    context = await console.context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        await context.close()
    assert not errors, errors


async def shoot(page: Page, name: str, *, full: bool = False) -> None:
    """A screenshot of the page, when `UI_SCREENSHOTS` names a directory (made by Playwright)."""
    if SHOTS:
        await page.evaluate("window.scrollTo(0, 0)")
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=full)


async def long_tasks(page: Page) -> dict[str, float]:
    durations: list[float] = await page.evaluate("window.__longTasks")
    return {"long_tasks": len(durations), "longest_task_ms": round(max(durations, default=0.0), 1)}


async def measure(page: Page, name: str) -> float | None:
    """The duration (ms) of the page's latest `performance.measure(name)`."""
    return await page.evaluate(
        "(name) => performance.getEntriesByName(name).at(-1)?.duration ?? null",
        name,
    )


# --------------------------------------------------------------------------- the flows


async def test_pages_and_files_need_no_token_but_the_data_does(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url, timeout=10) as anonymous:
        for path in ("/ui", "/ui/registry", "/ui/catalog", "/ui/catalog/a/b", "/ui/executions/1"):
            answer = await anonymous.get(path)
            assert answer.status_code == 200 and "<main" in answer.text, path
        script = await anonymous.get("/ui/static/console.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert (await anonymous.get("/api/runtime/components")).status_code == 401
        assert "/ui" not in json.dumps((await anonymous.get("/openapi.json")).json()["paths"])


async def test_the_token_is_asked_once_and_the_registry_is_live(console: Console) -> None:
    context = await console.context(token=False)
    try:
        page = await context.new_page()
        await page.goto("/ui/registry")
        await expect(page.locator("#token-dialog")).to_be_visible(timeout=WAIT_MS)
        await page.fill("#token-input", TOKEN)
        await page.click("#token-save")
        row = page.locator('.vrow[data-name="w-ui"]')
        await expect(row).to_be_visible(timeout=WAIT_MS)
        await expect(row.locator(".badge")).to_have_text("ready")
        beat = await row.locator("[data-heartbeat]").get_attribute("data-heartbeat")
        # The worker beats every second and the page reads the registry every two: it moves.
        await page.wait_for_function(
            "(before) => document.querySelector('.vrow[data-name=\"w-ui\"] [data-heartbeat]')"
            "?.dataset.heartbeat !== before",
            arg=beat,
            timeout=WAIT_MS,
        )
        await page.reload()
        await expect(row).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#token-dialog")).not_to_be_visible()
        await page.click('button[data-kind="broker"]')
        await expect(page.locator("#summary")).to_contain_text("0 brokers", timeout=WAIT_MS)
    finally:
        await context.close()


async def test_a_new_user_runs_the_example_step_by_step(console: Console, page: Page) -> None:
    await page.goto("/ui")
    await page.click("text=Catalog")
    await page.click("#example")
    await page.click("#register")
    await page.click("#check a")
    await expect(page.locator("#graph g.node")).to_have_count(4, timeout=WAIT_MS)
    await page.fill("#payload", json.dumps({"message": "Hi there"}))
    await page.click("#run")
    await expect(page.locator("#exec-status")).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    steps = page.locator("#timeline .vrow:not([hidden]) > span:nth-child(2)")
    await expect(steps).to_have_text(["start", "greet", "shout", "end"])
    await expect(page.locator("#facts")).to_contain_text("HI THERE!")


async def test_register_validate_run_and_watch_the_timeline_fill_in(console: Console, page: Page) -> None:
    document = gated("ui/gated")
    broken = json.loads(json.dumps(document))
    broken["workflow"][0]["next"] = [{"step": "nowhere"}]
    await page.goto("/ui/catalog")
    await page.fill("#yaml", yaml.safe_dump(broken))
    await page.click("#validate")
    await expect(page.locator("#check")).to_contain_text("nowhere", timeout=WAIT_MS)
    await page.click("#register")
    await expect(page.locator("#check .error")).to_contain_text("HTTP 400", timeout=WAIT_MS)
    await page.fill("#yaml", yaml.safe_dump(document, sort_keys=False))
    await page.click("#validate")
    await expect(page.locator("#check")).to_contain_text("valid: ui/gated, 5 steps", timeout=WAIT_MS)
    await page.click("#register")
    await expect(page.locator("#check")).to_contain_text("registered ui/gated v1", timeout=WAIT_MS)
    await expect(page.locator('#entries tr[data-path="ui/gated"]')).to_be_visible(timeout=WAIT_MS)
    await shoot(page, "catalog")

    # The playbook's page: its flow, each step with its type, the `when` on its transition.
    await page.click("#check a")
    await expect(page.locator("#graph g.node")).to_have_count(5, timeout=WAIT_MS)
    await expect(page.locator('#graph g.node[data-step="wait"] .type')).to_have_text("python")
    await expect(page.locator('#graph g.node[data-step="small"] .type')).to_have_text("router")
    await expect(page.locator("#graph text.when")).to_have_text(["wait.n > 1"])
    await expect(page.locator("#yaml")).to_have_value(yaml.safe_dump(document, sort_keys=False))
    await shoot(page, "playbook")

    gate = console.root / "gate-1"
    await page.fill("#payload", json.dumps({"gate": str(gate), "who": "console"}))
    await page.click("#run")
    await page.wait_for_url("**/ui/executions/*", timeout=WAIT_MS)
    wait = page.locator('#timeline .vrow[data-step="wait"]')
    await expect(wait).to_have_attribute("data-status", "running", timeout=WAIT_MS)
    await expect(page.locator('#graph g.node[data-step="wait"]')).to_have_class("node st-running t-python")
    await expect(page.locator('#timeline .vrow[data-step="big"]')).to_have_count(0)
    gate.touch()  # now the rest arrives live
    await expect(page.locator("#exec-status")).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    rows = page.locator("#timeline .vrow:not([hidden])")
    await expect(rows).to_have_count(4)  # start, wait, big, end: `small` was not taken
    await expect(page.locator("#timeline .vrow:not([hidden]) > span:nth-child(2)")).to_have_text(
        ["start", "wait", "big", "end"]
    )
    await expect(page.locator('#graph g.node[data-step="small"]')).to_have_class("node st-pending t-router")
    await page.click('#timeline .vrow[data-step="big"]')
    await expect(page.locator("#step-result")).to_contain_text('"hello": "console"')
    await expect(page.locator("#step-input")).to_contain_text('"who": "console"')
    await expect(page.locator("#log")).to_contain_text("execution_complete")
    await shoot(page, "execution", full=True)

    await page.goto("/ui/executions")
    listed = page.locator("#executions tbody tr[data-id]")
    await expect(listed.first).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    await shoot(page, "executions")
    await page.select_option("#status-filter", "failed")
    await expect(listed).to_have_count(0, timeout=WAIT_MS)
    await page.select_option("#status-filter", "completed")
    await page.fill("#path-filter", "ui/gated")
    await page.press("#path-filter", "Enter")
    await expect(listed).to_have_count(1, timeout=WAIT_MS)


async def test_cancel_a_running_execution_and_run_it_again(console: Console, page: Page) -> None:
    await console.register(gated("ui/slow"))
    gate = console.root / "never-opened"
    execution_id = await console.run("ui/slow", gate=str(gate))
    await page.goto("/ui/executions")
    running = page.locator(f'#executions tr[data-id="{execution_id}"]')
    await expect(running).to_have_attribute("data-status", "running", timeout=WAIT_MS)
    await running.locator("a").first.click()
    await expect(page.locator('#timeline .vrow[data-step="wait"]')).to_have_attribute(
        "data-status", "running", timeout=WAIT_MS
    )
    await expect(page.locator('#timeline .vrow[data-step="wait"] span:nth-child(5)')).to_have_text(
        "1", timeout=WAIT_MS
    )  # its first attempt has started on the worker
    await page.click("#cancel")
    await expect(page.locator("#exec-status")).to_have_attribute("data-status", "cancelled", timeout=WAIT_MS)
    await expect(page.locator('#timeline .vrow[data-step="wait"]')).to_have_attribute(
        "data-status", "cancelled"
    )
    await expect(page.locator("#cancel")).to_be_disabled()

    # Run again, with a payload that opens no gate: the new run completes.
    await page.fill("#payload", json.dumps({"gate": "", "who": "again"}))
    await page.click("#rerun")
    await page.wait_for_url(lambda url: not url.endswith(f"/{execution_id}"), timeout=WAIT_MS)
    await expect(page.locator("#exec-status")).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    await page.click('#graph g.node[data-step="big"]')
    await expect(page.locator("#step-result")).to_contain_text('"hello": "again"')


async def test_an_iterator_shows_its_items(console: Console, page: Page) -> None:
    text = LOOPS.read_text()
    answer = await console.api.post("/api/catalog/register", json={"content": text})
    assert answer.status_code == 200, answer.text
    execution_id = await console.run("examples/loops")
    await page.goto(f"/ui/executions/{execution_id}")
    await expect(page.locator("#exec-status")).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    squares = page.locator('#timeline .vrow[data-step="squares"]')
    await expect(squares).to_have_attribute("data-status", "completed")
    await expect(squares.locator("span:nth-child(5)")).to_contain_text("6 items")
    await expect(page.locator('#graph g.node[data-step="squares"] .type')).to_have_text("iterator: python")
    await squares.click()
    await expect(page.locator("#step-result")).to_contain_text('"square": 25')


# --------------------------------------------------------------------------- at scale

CHAINS = 10
CHAIN_LENGTH = 100


def thousand_steps() -> dict[str, Any]:
    """start -> wait (gated) -> ten chains of a hundred routers -> end: 1,003 steps, the routers
    run by the broker itself, so their 2,000 events come as fast as it can walk them."""
    heads = [{"step": f"c{chain}_000"} for chain in range(CHAINS)]
    steps: list[dict[str, Any]] = [
        {"step": "start", "next": [{"step": "wait"}]},
        {"step": "wait", "type": "python", "code": GATE_CODE, "data": {"gate": "{{ workload.gate }}"}},
    ]
    steps[1]["next"] = heads
    for chain in range(CHAINS):
        for i in range(CHAIN_LENGTH):
            following = f"c{chain}_{i + 1:03d}" if i + 1 < CHAIN_LENGTH else "end"
            steps.append({"step": f"c{chain}_{i:03d}", "next": [{"step": following}]})
    steps.append({"step": "end"})
    return playbook("ui/thousand", steps, gate="")


async def test_a_thousand_step_execution_renders_and_updates(console: Console, page: Page) -> None:
    total = CHAINS * CHAIN_LENGTH + 3
    await console.register(thousand_steps())
    gate = console.root / "gate-thousand"
    execution_id = await console.run("ui/thousand", gate=str(gate))
    await page.goto(f"/ui/executions/{execution_id}")
    await expect(page.locator('#timeline .vrow[data-step="wait"]')).to_have_attribute(
        "data-status", "running", timeout=WAIT_MS
    )
    await expect(page.locator("#graph g.node")).to_have_count(total, timeout=WAIT_MS)
    opened = time.monotonic()
    gate.touch()
    await page.wait_for_function(
        f"document.getElementById('timeline').dataset.completed === '{total}'", timeout=60_000
    )
    live_s = time.monotonic() - opened
    await expect(page.locator("#exec-status")).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    live = await long_tasks(page)
    stored = await console.api.get(f"/api/executions/{execution_id}")
    events = len(stored.json()["events"])

    # Again from the store: the page opened on an execution that has ended.
    started = time.monotonic()
    await page.reload()
    await page.wait_for_function(
        f"document.getElementById('timeline').dataset.completed === '{total}' && "
        f"document.querySelectorAll('#graph g.node.st-completed').length === {total}",
        timeout=60_000,
    )
    reload_s = time.monotonic() - started
    first_render = await page.evaluate(
        "performance.getEntriesByName('execution:first-render')[0]?.startTime ?? null"
    )
    # A step far down, chosen in the graph: the timeline scrolls to it.
    await page.click('#graph g.node[data-step="c9_099"]')
    await expect(page.locator('#timeline .vrow.selected[data-step="c9_099"]')).to_be_visible()
    await expect(page.locator("#step-detail")).to_contain_text("c9_099")
    rows_in_dom = await page.locator("#timeline .vrow").count()
    console.record(
        "execution_1000_steps",
        {
            "steps": total,
            "events": events,
            "live_gate_to_all_completed_s": round(live_s, 2),
            "live": live,
            "reload_to_all_drawn_s": round(reload_s, 2),
            "reload_first_render_ms": round(first_render, 1) if first_render is not None else None,
            "reload": await long_tasks(page),
            "timeline_rows_in_dom": rows_in_dom,
        },
    )


COMPONENTS = 10_000


async def seed_components(console: Console, count: int) -> None:
    """Registrations on the bus, as `POST /api/runtime/register` publishes them, a thousand at a
    time; the runtime consumer applies them in its batches."""
    js = console.nc.jetstream()
    for first in range(0, count, 1000):
        publishes = []
        for i in range(first, min(first + 1000, count)):
            registration = RuntimeRegistration(
                name=f"pool-{i:05d}",
                runtime="python",
                capacity=4,
                hostname="ui-host",
                pid=i,
                labels={"zone": "ui"},
            )
            command = Command(
                id=new_request_id(),
                type=subjects.command_type(subjects.RUNTIME_REGISTER),
                payload=registration.as_payload(),
            )
            publishes.append(
                js.publish(
                    subjects.RUNTIME_REGISTER,
                    command.model_dump_json().encode(),
                    headers={MSG_ID_HEADER: command.id},
                )
            )
        await asyncio.gather(*publishes)

    async def registered() -> bool:
        return await console.db.value("SELECT count(*) FROM runtime_components") > count

    deadline = time.monotonic() + 60
    while not await registered():
        assert time.monotonic() < deadline, "the registrations were not applied within 60 s"
        await asyncio.sleep(0.2)


async def test_a_registry_of_ten_thousand_components(console: Console, page: Page) -> None:
    await seed_components(console, COMPONENTS)
    total = COMPONENTS + 1  # and the worker
    started = time.monotonic()
    await page.goto("/ui/registry")
    await expect(page.locator(".vrow").first).to_be_visible(timeout=WAIT_MS)
    first_rows_s = time.monotonic() - started
    await expect(page.locator("#components")).to_have_attribute("data-count", str(total), timeout=60_000)
    loaded_s = time.monotonic() - started
    drawn = await page.locator(".vrow:not([hidden])").count()
    await page.wait_for_function(
        "Number(document.getElementById('components').dataset.loads) >= 3", timeout=60_000
    )
    # A change among ten thousand shows at the next read.
    changed = time.monotonic()
    answer = await console.api.request(
        "DELETE",
        "/api/worker/pool/deregister",
        json={"name": "pool-00003"},
        headers={"Authorization": f"Bearer {WORKER_TOKEN}"},
    )
    assert answer.status_code == 200, answer.text
    await expect(page.locator('.vrow[data-name="pool-00003"] .badge')).to_have_text(
        "offline", timeout=WAIT_MS
    )
    change_shown_s = time.monotonic() - changed
    await page.evaluate(
        "(list => { list.scrollTop = list.scrollHeight; })(document.getElementById('components'))"
    )
    await expect(page.locator('.vrow[data-name="w-ui"]')).to_be_visible(timeout=WAIT_MS)
    console.record(
        "registry_10000_components",
        {
            "components": total,
            "rows_in_dom": drawn,
            "first_rows_s": round(first_rows_s, 2),
            "all_loaded_s": round(loaded_s, 2),
            "first_load_ms": round(await measure(page, "registry:load") or 0, 1),
            "refresh_ms": round(await measure(page, "registry:refresh") or 0, 1),
            "deregistered_to_shown_s": round(change_shown_s, 2),
            **await long_tasks(page),
        },
    )
    await page.evaluate("document.getElementById('components').scrollTop = 0")
    await expect(page.locator('.vrow[data-name="pool-00000"]')).to_be_visible()
    await shoot(page, "registry")
