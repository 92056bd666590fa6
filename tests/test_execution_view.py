"""How the CLI reads an execution's steps from its events: the runs of the steps that do work
(control steps and loop items are not runs of their own); and JSON logs carry the fields a log
call passes."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from noetl import logs
from noetl.execution_view import follow, step_runs

T0 = "2026-01-01T10:00:00+00:00"
T1 = "2026-01-01T10:00:01.500000+00:00"
T2 = "2026-01-01T10:00:02+00:00"
T3 = "2026-01-01T10:00:05+00:00"


def flat(event_id: int, event_type: str, step: str | None, status: str, at: str, **more: Any) -> dict:
    return {
        "event_id": str(event_id),
        "event_type": event_type,
        "node_id": f"7:{step}",
        "node_name": step or "demo",
        "node_type": more.pop("node_type", "playbook" if step is None else "python"),
        "status": status,
        "duration": more.pop("duration", None),
        "timestamp": at,
        "worker_id": more.pop("worker_id", None),
        "current_index": more.pop("current_index", None),
        **more,
    }


FLAT = [
    flat(1, "execution_start", None, "STARTED", T0),
    flat(2, "step_started", "greet", "RUNNING", T0),
    flat(3, "action_started", "greet", "RUNNING", T0, worker_id="w@h:1"),
    flat(4, "action_error", "greet", "FAILED", T1, worker_id="w@h:1"),
    flat(5, "action_started", "greet", "RUNNING", T1, worker_id="w@h:2"),
    flat(6, "action_completed", "greet", "COMPLETED", T2, worker_id="w@h:2"),
    flat(7, "step_completed", "greet", "COMPLETED", T2, duration=1.75),
    flat(8, "step_started", "shout", "RUNNING", T2),
    flat(9, "action_started", "shout", "RUNNING", T2, worker_id="w@h:1"),
    flat(10, "step_failed", "shout", "FAILED", T3),
]


def test_the_runs_of_the_steps_that_do_work() -> None:
    runs = step_runs(FLAT)
    assert [(r.step, r.status, r.attempts, r.worker, r.finished_by) for r in runs] == [
        ("greet", "COMPLETED", 2, "w@h:2", "7"),
        ("shout", "FAILED", 1, "w@h:1", "10"),
    ]
    assert runs[0].duration == 1.75  # as the event says
    assert runs[1].duration == 3.0  # timed by its events


def test_control_steps_are_left_out_and_loop_items_are_not_attempts() -> None:
    events = [
        flat(1, "step_started", "start", "RUNNING", T0, node_type="start"),
        flat(2, "step_completed", "start", "COMPLETED", T0, node_type="start"),
        flat(3, "step_started", "each", "RUNNING", T0, node_type="iterator"),
        *[flat(4 + i, "action_started", "each", "RUNNING", T1, current_index=i) for i in range(3)],
        flat(9, "step_completed", "each", "COMPLETED", T2, node_type="iterator", duration=2.0),
    ]
    runs = step_runs(events)
    assert [(r.step, r.status, r.attempts, r.duration) for r in runs] == [("each", "COMPLETED", 0, 2.0)]


def test_a_step_reached_twice_ran_twice_and_one_running_has_no_duration() -> None:
    events = [
        *FLAT[:7],
        flat(11, "step_started", "greet", "RUNNING", T2),
        flat(12, "step_completed", "greet", "COMPLETED", T3),
        flat(13, "step_started", "shout", "RUNNING", T3),
    ]
    runs = step_runs(events)
    assert [(r.step, r.finished_by, r.duration) for r in runs] == [
        ("greet", "7", 1.75),
        ("greet", "12", 3.0),
        ("shout", None, None),
    ]


def test_follow_tells_each_finished_step_once_and_returns_the_ended_execution() -> None:
    polls = [
        {"status": "running", "events": FLAT[:3]},
        {"status": "running", "events": FLAT[:8]},
        {"status": "running", "events": FLAT[:9]},
        {"status": "failed", "events": FLAT},
    ]
    told: list[tuple[str, str]] = []
    detail = follow(lambda: polls.pop(0), lambda run: told.append((run.step, run.status)), interval=0)
    assert told == [("greet", "COMPLETED"), ("shout", "FAILED")]
    assert detail["status"] == "failed" and polls == []


def test_json_logs_carry_the_ids_a_log_call_passes(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("info", as_json=True)
        log = logging.getLogger("noetl.test")
        log.info("step %s done", "greet", extra={"execution_id": "7", "request_id": "r-1"})
        log.debug("not shown")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    first, second = (json.loads(line) for line in lines)  # one object per line, nothing else
    assert {k: first[k] for k in ("level", "logger", "message", "execution_id", "request_id")} == {
        "level": "INFO",
        "logger": "noetl.test",
        "message": "step greet done",
        "execution_id": "7",
        "request_id": "r-1",
    }
    assert first["time"]
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc_info"]
