"""NoETL's playbook vocabulary end to end, on real NATS, PostgreSQL and worker processes: the
examples of `examples/` (every construct), and the rules PLAYBOOK.md decides where the original
engine was broken or silent."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

pytest.register_assert_rewrite("workers_support")
from workers_support import WorkerStack, action_events, events_of, playbook, python_step, to_end, types_of  # noqa: E402

pytest_plugins = ["workers_support"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOKEN = "tok-4f1d9c2e-very-secret"


async def register_example(wx: WorkerStack, name: str) -> str:
    text = (EXAMPLES / f"{name}.yaml").read_text()
    response = await wx.client.post("/api/catalog/register", json={"content": text})
    assert response.status_code == 200, response.text
    return response.json()["path"]


async def register_credential(wx: WorkerStack, name: str, kind: str, data: dict[str, Any]) -> None:
    response = await wx.client.post("/api/credentials", json={"name": name, "type": kind, "data": data})
    assert response.status_code == 200, response.text


async def pg_local(wx: WorkerStack) -> None:
    dsn = urlsplit(wx.servers.dsn)
    data = {
        "db_host": dsn.hostname,
        "db_port": dsn.port,
        "db_user": dsn.username,
        "db_password": dsn.password or "",
        "db_name": dsn.path.strip("/"),
    }
    await register_credential(wx, "pg_local", "postgres", data)


async def run_example(wx: WorkerStack, name: str, **parameters: Any) -> dict[str, Any]:
    path = await register_example(wx, name)
    return await wx.finished(await wx.run(path, **parameters), timeout=60)


def completed(detail: dict[str, Any]) -> dict[str, Any]:
    assert detail["status"] == "completed", (detail["error"], types_of(detail))
    return detail


# --------------------------------------------------------------------------- the examples


async def test_weather_when_then_else_workbook_and_transition_data(wx: WorkerStack) -> None:
    detail = completed(await run_example(wx, "weather"))
    assert detail["result"] == {"alert": True, "message": "warm in Paris: 23"}
    assert "calm" not in {e["step"] for e in events_of(detail)}
    (warn,) = events_of(detail, "action_completed", "warn")
    assert warn["context"] == {"input": {"city": "Paris", "temperature": 23}}  # the transition's won
    (evaluate,) = events_of(detail, "step_completed", "evaluate")
    assert evaluate["result"] == {"max": 23, "alert": True} and evaluate["node_type"] == "python"

    cold = completed(await wx.finished(await wx.run("examples/weather", threshold=30)))
    assert cold["result"] == {"alert": False, "message": "nothing to report in Paris"}
    idle = completed(await wx.finished(await wx.run("examples/weather", state="paused")))
    assert [e["step"] for e in events_of(idle, "step_started")] == ["start", "end"]


async def test_loops_sequential_async_filtered_and_chunked(wx: WorkerStack) -> None:
    detail = completed(await run_example(wx, "loops"))
    assert detail["result"] == {
        "squares": [25, 9, 64, 1, 81, 4],
        "largest": [9, 8, 5],
        "pair_sums": [8, 9, 11],
    }
    # One loop_iteration per item, with its index and item; results in item order.
    iterations = events_of(detail, "loop_iteration", "squares")
    assert [(e["current_index"], e["current_item"]) for e in iterations] == list(
        enumerate([5, 3, 8, 1, 9, 2])
    )
    (done,) = events_of(detail, "loop_completed", "squares")
    assert [r["index"] for r in done["result"]] == [0, 1, 2, 3, 4, 5]
    items = [e for e in events_of(detail, "action_completed", "squares")]
    assert sorted(e["current_index"] for e in items) == [0, 1, 2, 3, 4, 5]
    for event in items:
        assert event["current_item"] == [5, 3, 8, 1, 9, 2][event["current_index"]]
        assert event["node_id"] == f"{detail['execution_id']}:squares:{event['current_index']}"
    # `where`, `order_by`, `limit` decide the items; each one's save is in its event.
    largest = events_of(detail, "loop_iteration", "largest")
    assert [e["current_item"]["n"] for e in largest] == [9, 8, 5]
    saved = sorted(
        e["meta"]["saved"]["data"]["kept"] for e in events_of(detail, "action_completed", "largest")
    )
    assert saved == [25, 64, 81]
    assert [e["current_item"] for e in events_of(detail, "loop_iteration", "pairs")] == [
        [5, 3],
        [8, 1],
        [9, 2],
    ]
    (squares,) = events_of(detail, "step_completed", "squares")
    assert squares["node_type"] == "iterator" and squares["duration"] >= 0


async def test_sub_playbooks_return_their_results_to_the_step_that_ran_them(wx: WorkerStack) -> None:
    await register_example(wx, "team_score")
    detail = completed(await run_example(wx, "teams"))
    assert detail["result"] == {
        "scores": [
            {"name": "red", "size": 3, "grade": "large"},
            {"name": "blue", "size": 1, "grade": "small"},
            {"name": "green", "size": 4, "grade": "large"},
        ],
        "solo": {"grade": "small"},  # `return_step: grade`
    }
    parent = detail["execution_id"]
    listing = (await wx.client.get("/api/executions", params={"path": "examples/team_score"})).json()
    children = [await wx.detail(c["execution_id"]) for c in listing["items"]]
    children = [c for c in children if c["parent_execution_id"] == parent]
    assert len(children) == 4
    assert sorted(c["parent_step"] for c in children) == ["one_more", "score_all", "score_all", "score_all"]
    parent_events = {e["event_id"]: e for e in detail["events"]}
    for child in children:
        assert child["status"] == "completed"
        # The child's start names the parent's event that started it, and its execution.
        (start,) = events_of(child, "execution_start")
        assert start["parent_execution_id"] == parent
        assert parent_events[start["parent_event_id"]]["node_name"] == child["parent_step"]
        assert child["parent_event_id"] == start["parent_event_id"]
        # The child's workbook step ran its task.
        (grade,) = events_of(child, "step_completed", "grade")
        assert grade["result"]["grade"] in ("large", "small")


async def test_postgres_steps_and_saves_against_a_credential(wx: WorkerStack) -> None:
    await pg_local(wx)
    detail = completed(await run_example(wx, "postgres"))
    assert detail["result"] == {
        "over_30": [{"name": "Ada", "age": 36}, {"name": "Grace", "age": 45}],
        "people": 3,
    }
    rows = await wx.db.all("SELECT email, name, age, tags FROM noetl_example_people ORDER BY email")
    assert rows[2] == {
        "email": "obrien@example.com",
        "name": "O'Brien",
        "age": 29,
        "tags": ["example", "o'brien"],
    }
    # Upsert by key: a second run leaves one row per email.
    completed(await wx.finished(await wx.run("examples/postgres")))
    assert await wx.db.value("SELECT count(*) FROM noetl_example_people") == 3
    (query,) = events_of(detail, "step_completed", "query")
    assert query["result"]["command_1"] == {
        "status": "success",
        "rows": [{"people": 3}],
        "row_count": 1,
        "columns": ["people"],
    }
    # The credential's password is in no event.
    password = urlsplit(wx.servers.dsn).password
    if password:
        assert password not in json.dumps(detail["events"])


async def test_duckdb_save_and_query(wx: WorkerStack) -> None:
    detail = completed(await run_example(wx, "duckdb"))
    assert detail["result"] == [{"region": "north", "total": 15}, {"region": "south", "total": 7}]
    (stage,) = events_of(detail, "action_completed", "stage")
    assert stage["meta"]["saved"]["saved"] == "duckdb" and stage["meta"]["saved"]["table"] == "sales"


async def test_a_secret_reaches_the_step_that_reads_it_and_nothing_else(wx: WorkerStack) -> None:
    await register_credential(wx, "api_token", "generic", {"token": TOKEN})
    detail = completed(await run_example(wx, "secrets"))
    (used,) = events_of(detail, "step_completed", "use_token")
    assert used["result"] == {"length": len(TOKEN), "looks_like_a_token": True}
    (got,) = events_of(detail, "step_completed", "get_token")
    assert got["result"]["secret_name"] == "api_token" and TOKEN not in json.dumps(got["result"])
    assert TOKEN not in json.dumps(detail)
    for table in ("events", "jobs", "processed_commands"):
        dumped = await wx.db.value(f"SELECT coalesce(string_agg(t::text, ''), '') FROM {table} t")
        assert TOKEN not in dumped, table
    # A cloud secret manager is not reachable here: a clear error.
    path = "tests/playbooks/gcp-secret"
    await wx.register(
        playbook(
            path,
            [{"step": "get", "type": "secrets", "provider": "google", "secret_name": "x"}, {"step": "end"}],
        )
    )
    failed = await wx.finished(await wx.run(path))
    assert failed["status"] == "failed" and "'google' is not available" in failed["error"], failed["error"]


# --------------------------------------------------------------------------- PLAYBOOK.md's decisions


async def test_no_start_step_begins_at_the_first_and_a_typed_start_runs(wx: WorkerStack) -> None:
    path = "tests/playbooks/no-start"
    await wx.register(
        playbook(
            path,
            [
                python_step("first", "def main():\n    return {'n': 1}\n", next=to_end("second")),
                python_step(
                    "second",
                    "def main(first):\n    return {'n': first['n'] + 1}\n",
                    data={"first": "{{ first }}"},
                ),
            ],
        )
    )
    detail = completed(await wx.finished(await wx.run(path)))
    assert detail["result"] == {"n": 2}

    typed = "tests/playbooks/typed-start"
    await wx.register(
        playbook(
            typed,
            [
                python_step("start", "def main():\n    return {'from': 'start'}\n", next=to_end()),
                {
                    "step": "end",
                    "type": "end",
                    "save": {"storage": "event_log", "data": {"saw": "{{ start.from }}"}},
                },
            ],
        )
    )
    detail = completed(await wx.finished(await wx.run(typed)))
    assert detail["result"] == {"saw": "start"}  # `end` with a save: the saved data
    (end,) = events_of(detail, "step_completed", "end")
    assert end["node_type"] == "save"


async def test_spellings_of_code_and_sql_and_the_credential_auth_form(wx: WorkerStack) -> None:
    await pg_local(wx)
    path = "tests/playbooks/spellings"
    code = base64.b64encode(b"def main(x):\n    return {'twice': 2 * x}\n").decode()
    sql = base64.b64encode(b"SELECT {{ x }} + 1 AS y").decode()
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": [{"step": "py", "data": {"x": 21}}]},
                {"step": "py", "type": "python", "code_b64": code, "next": to_end("b64")},
                {
                    "step": "b64",
                    "type": "postgres",
                    "auth": {"type": "postgres", "credential": "pg_local"},
                    "with": {"x": "{{ py.twice }}"},
                    "command_b64": sql,
                    "next": to_end("plain"),
                },
                {
                    "step": "plain",
                    "type": "postgres",
                    "credential": "pg_local",
                    "sql": "SELECT 7 AS z",
                    "next": to_end(),
                },
                {
                    "step": "end",
                    "result": {"y": "{{ b64.command_0.rows[0].y }}", "z": "{{ plain.command_0.rows[0].z }}"},
                },
            ],
        )
    )
    detail = completed(await wx.finished(await wx.run(path)))
    assert detail["result"] == {"y": 43, "z": 7}


async def test_fan_in_runs_the_target_once_and_the_execution_completes_once(wx: WorkerStack) -> None:
    path = "tests/playbooks/fan-in"
    quick = "def main():\n    return {'ok': True}\n"
    slow = "def main():\n    import time\n    time.sleep(0.3)\n    return {'ok': True}\n"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("a", "b")},
                python_step("a", quick, next=to_end("join")),
                python_step("b", quick, next=to_end("b2")),
                python_step("b2", slow, next=to_end("join")),
                python_step("join", "def main():\n    return {'joined': True}\n", next=to_end()),
                {"step": "end"},
            ],
        )
    )
    detail = completed(await wx.finished(await wx.run(path)))
    assert len(events_of(detail, "step_started", "join")) == 1
    assert types_of(detail).count("execution_complete") == 1
    assert len(events_of(detail, "step_started", "end")) == 1


async def test_a_loop_back_is_bounded_by_the_steps_an_execution_may_run(wx: WorkerStack) -> None:
    path = "tests/playbooks/endless"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("tick")},
                python_step(
                    "tick",
                    "def main():\n    return {'again': True}\n",
                    next=[{"step": "tick", "when": "{{ tick.again }}"}, {"step": "end"}],
                ),
                {"step": "end"},
            ],
        )
    )
    # The bound comes from NOETL_LIMIT_STEPS_PER_EXECUTION (default 10,000): a run that loops
    # forever stops there with an error that says so. The test's stack uses the default, so the
    # loop is cut short by `when` turning false instead; see test_workers for the counted loop.
    response = await wx.client.post(
        "/api/catalog/playbooks/validate",
        json={
            "content": yaml.safe_dump(
                playbook(
                    path,
                    [{"step": "start", "next": to_end("ping")}, {"step": "ping", "next": to_end("start")}],
                )
            )
        },
    )
    assert response.status_code == 200
    assert response.json()["valid"] is False and "cycle with no exit" in response.json()["errors"][0]


async def test_a_failing_child_fails_its_step_and_cancel_reaches_the_child(wx: WorkerStack) -> None:
    child, parent = "tests/playbooks/child-fails", "tests/playbooks/parent-of-failing"
    await wx.register(
        playbook(
            child,
            [
                python_step("boom", "def main():\n    raise RuntimeError('child broke')\n", next=to_end()),
                {"step": "end"},
            ],
        )
    )
    await wx.register(
        playbook(
            parent,
            [
                {"step": "start", "next": to_end("call")},
                {"step": "call", "type": "playbook", "path": child, "next": to_end()},
                {"step": "end"},
            ],
        )
    )
    detail = await wx.finished(await wx.run(parent))
    assert detail["status"] == "failed" and "child broke" in detail["error"], detail["error"]
    (failed,) = events_of(detail, "step_failed", "call")
    assert "child execution" in failed["error"]

    sleeper, waiting = "tests/playbooks/child-sleeps", "tests/playbooks/parent-waits"
    await wx.register(
        playbook(
            sleeper,
            [
                python_step(
                    "nap", "def main():\n    import time\n    time.sleep(60)\n", timeout=120, next=to_end()
                ),
                {"step": "end"},
            ],
        )
    )
    await wx.register(
        playbook(
            waiting,
            [
                {"step": "start", "next": to_end("call")},
                {"step": "call", "type": "playbook", "path": sleeper, "next": to_end()},
                {"step": "end"},
            ],
        )
    )
    eid = await wx.run(waiting)

    async def child_running() -> str | None:
        items = (
            await wx.client.get("/api/executions", params={"path": sleeper, "status": "running"})
        ).json()["items"]
        mine = [i for i in items if (await wx.detail(i["execution_id"]))["parent_execution_id"] == eid]
        return mine[0]["execution_id"] if mine else None

    child_id = await wx.until(child_running, what="the child execution")
    await wx.event(child_id, "action_started", "nap")
    response = await wx.client.post(f"/api/executions/{eid}/cancel", json={"reason": "stop all"})
    assert response.status_code == 200
    child_detail = await wx.finished(child_id)
    assert child_detail["status"] == "cancelled"
    (cancelled,) = events_of(child_detail, "execution_cancelled")
    assert f"parent execution {eid}" in cancelled["context"]["reason"]


async def test_a_duckdb_extension_that_must_be_downloaded_is_a_clear_error(wx: WorkerStack) -> None:
    path = "tests/playbooks/duckdb-httpfs"
    await wx.register(
        playbook(
            path,
            [
                {
                    "step": "read",
                    "type": "duckdb",
                    "command": "-- needs the network\nINSTALL httpfs;\nLOAD httpfs;",
                },
                {"step": "end"},
            ],
        )
    )
    detail = await wx.finished(await wx.run(path))
    assert detail["status"] == "failed"
    assert "extension 'httpfs'" in detail["error"] and "not installed" in detail["error"], detail["error"]


async def test_a_failed_save_fails_its_step(wx: WorkerStack) -> None:
    await pg_local(wx)
    path = "tests/playbooks/bad-save"
    await wx.register(
        playbook(
            path,
            [
                python_step(
                    "make",
                    "def main():\n    return {'a': 1}\n",
                    save={"storage": "postgres", "auth": "pg_local", "table": "no_such_table_here"},
                    next=to_end(),
                ),
                {"step": "end"},
            ],
        )
    )
    detail = await wx.finished(await wx.run(path))
    assert detail["status"] == "failed"
    assert "save failed" in detail["error"] and "no_such_table_here" in detail["error"], detail["error"]
    assert not action_events(detail, "step_completed")


async def test_a_loop_saves_its_whole_result_and_a_failing_item_fails_it(wx: WorkerStack) -> None:
    await pg_local(wx)
    await wx.db.execute("DROP TABLE IF EXISTS noetl_loop_totals")
    await wx.db.execute("CREATE TABLE noetl_loop_totals (run text PRIMARY KEY, squares jsonb)")
    path = "tests/playbooks/loop-save"
    square = "def main(n):\n    return n * n\n"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("each")},
                {
                    "step": "each",
                    "type": "iterator",
                    "mode": "async",
                    "concurrency": 8,
                    "collection": "{{ workload.numbers }}",
                    "element": "n",
                    "task": {"type": "python", "code": square, "data": {"n": "{{ n }}"}},
                    "save": {
                        "storage": "postgres",
                        "auth": "pg_local",
                        "table": "noetl_loop_totals",
                        "data": {"run": "{{ execution_id }}", "squares": "{{ result }}"},
                    },
                    "next": to_end(),
                },
                {"step": "end"},
            ],
            workload={"numbers": list(range(10))},
        )
    )
    detail = completed(await wx.finished(await wx.run(path)))
    squares = [n * n for n in range(10)]
    assert detail["result"] == squares
    row = await wx.db.one("SELECT squares FROM noetl_loop_totals WHERE run = %s", detail["execution_id"])
    assert row == {"squares": squares}

    failing = "tests/playbooks/loop-fails"
    picky = "def main(n):\n    if n == 3:\n        raise ValueError('three is not allowed')\n    return n\n"
    await wx.register(
        playbook(
            failing,
            [
                {
                    "step": "each",
                    "type": "iterator",
                    "mode": "async",
                    "concurrency": 4,
                    "collection": [1, 2, 3, 4, 5, 6],
                    "element": "n",
                    "task": {"type": "python", "code": picky, "data": {"n": "{{ n }}"}},
                    "next": to_end("after"),
                },
                python_step("after", "def main():\n    return 1\n"),
            ],
        )
    )
    failed = await wx.finished(await wx.run(failing))
    assert failed["status"] == "failed", failed
    assert "item 2" in failed["error"] and "three is not allowed" in failed["error"], failed["error"]
    (error,) = events_of(failed, "action_error", "each")
    assert error["current_index"] == 2 and error["current_item"] == 3
    assert "after" not in {e["step"] for e in events_of(failed, "step_started")}
    left = await wx.db.value(
        "SELECT count(*) FROM jobs WHERE execution_id = %s AND status IN ('pending', 'queued', 'running')",
        int(failed["execution_id"]),
    )
    assert left == 0
