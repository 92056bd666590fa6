"""A playbook cannot stall or break the catalog: what YAML can say and JSON cannot hold is refused
with a clear 400, so is what expands past the limits (aliases, nesting, steps), and the heaviest
playbook the limits allow is read off the event loop that applies everyone's commands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import yaml
from conftest import Db, Servers, Stack, StackFactory
from helpers_execution import domain_stack, playbook, register

from noetl.playbook.document import Limits, PlaybookError
from noetl.playbook.workflow import read


@pytest.fixture
async def xstack(make_stack: StackFactory, servers: Servers) -> AsyncIterator[Stack]:
    async with domain_stack(make_stack, servers) as stack:
        await stack.start_consumers(["runtime"])
        yield stack


def bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def chain(steps: int) -> str:
    workflow = [{"step": "start", "next": ["s0"]}]
    workflow += [
        {"step": f"s{i}", "next": [f"s{i + 1}" if i < steps - 3 else "end"]} for i in range(steps - 2)
    ]
    workflow.append({"step": "end"})
    return yaml.safe_dump(
        {"kind": "Playbook", "metadata": {"path": f"limits/chain-{steps}"}, "workflow": workflow}
    )


REFUSED = {
    "alias-bomb": (bomb(9), "once its aliases expand"),
    "recursive-alias": ("kind: Playbook\nmetadata: &m {path: x, loop: *m}\nworkflow: []\n", "alias recurses"),
    "deep-nesting": (
        "kind: Playbook\nmetadata: {path: x}\nworkload: " + "[" * 200 + "]" * 200 + "\n",
        "nested",
    ),
    "yaml-set": ("kind: Playbook\nmetadata: {path: x}\nworkload: !!set {a, b}\n", "YAML set"),
    "yaml-binary": ("kind: Playbook\nmetadata: {path: x}\nworkload: {b: !!binary aGk=}\n", "binary"),
    "nan": ("kind: Playbook\nmetadata: {path: x}\nworkload: {n: .nan}\n", "not a number"),
    "infinity": ("kind: Playbook\nmetadata: {path: x}\nworkload: {n: -.inf}\n", "not a number"),
    "too-many-steps": (chain(5_001), "at most 5000"),
    "path-of-slashes": ("kind: Playbook\nmetadata: {path: '///'}\nworkflow: [{step: start}]\n", "no path"),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_what_the_store_cannot_hold_or_the_limits_allow_is_a_clear_400(
    xstack: Stack, db: Db, case: str
) -> None:
    text, words = REFUSED[case]
    response = await xstack.client.post("/api/catalog/register", json={"content": text})
    assert response.status_code == 400, response.text
    assert words in response.json()["detail"], response.json()
    assert await db.value("SELECT count(*) FROM catalog") == 0
    # Checking gives the same answer, without registering.
    checked = await xstack.client.post("/api/catalog/playbooks/validate", json={"content": text})
    assert checked.status_code == 200 and checked.json()["valid"] is False
    assert words in checked.json()["errors"][0]
    assert (await register(xstack.client))["version"] == 1  # the consumer keeps serving


async def test_dates_stay_the_text_they_were_written_as(xstack: Stack) -> None:
    text = playbook(workload={"day": "placeholder"}).replace("day: placeholder", "day: 2024-01-31")
    await register(xstack.client, text)
    entry = (await xstack.client.get("/api/catalog/playbooks/examples/hello_world")).json()
    assert entry["payload"]["workload"]["day"] == "2024-01-31"


async def test_the_longest_chain_the_limits_allow_registers(xstack: Stack) -> None:
    text = chain(5_000)
    response = await xstack.client.post("/api/catalog/register", json={"content": text})
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "limits/chain-5000"


def heaviest() -> str:
    """5,000 steps, each an alias of one big step: about as much work as the limits allow."""
    body = {f"k{i}": f"{{{{ workload.v{i} }}}}" for i in range(30)}
    text = [
        "kind: Playbook",
        "metadata: {path: limits/heaviest}",
        "x: &data " + yaml.safe_dump(body, default_flow_style=True).strip(),
        "workflow:",
    ]
    text += [
        f'  - {{step: s{i}, type: python, code: "def main(**k):\\n    return 1\\n", data: *data}}'
        for i in range(4_990)
    ]
    return "\n".join(text) + "\n"


async def test_the_heaviest_playbook_is_read_off_the_loop_that_applies_commands(xstack: Stack) -> None:
    """While it is read, the consumers' event loop (this test's: they run in-process) keeps
    turning and a worker pool's registration is answered."""
    text = heaviest()
    assert len(text) < 512 * 1024
    started = time.perf_counter()
    await asyncio.to_thread(read, text, "Playbook", Limits())  # how long reading it takes here
    reading = time.perf_counter() - started

    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        heavy = asyncio.create_task(xstack.client.post("/api/catalog/register", json={"content": text}))
        light = await xstack.client.post(
            "/api/worker/pool/register", json={"name": "light", "runtime": "python"}
        )
        assert light.status_code == 200, light.text
        response = await heavy
    finally:
        done.set()
        await ticker
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "limits/heaviest"
    # Read inline, the loop would have stalled for the whole read.
    assert max(gaps) < max(0.5, reading / 2), (max(gaps), reading)
    # Running it builds its plan (in the offload process too): the first step is dispatched.
    run = await xstack.client.post("/api/executions/run", json={"path": "limits/heaviest"})
    assert run.status_code == 200, run.text
    detail = (await xstack.client.get(f"/api/executions/{run.json()['execution_id']}")).json()
    assert [(e["event_type"], e["node_name"]) for e in detail["events"]] == [
        ("execution_start", "heaviest"),
        ("step_started", "s0"),
    ]


def test_limits_are_settings() -> None:
    with pytest.raises(PlaybookError, match="more than 100 values"):
        read(bomb(4), "Playbook", Limits(max_nodes=100))
    with pytest.raises(PlaybookError, match="deeper than 3 levels"):
        read(
            "kind: Playbook\nmetadata: {path: x}\nworkload: {a: {b: {c: {d: 1}}}}\n",
            "Playbook",
            Limits(max_depth=3),
        )
