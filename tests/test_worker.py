"""The worker protocol, end to end through a real subprocess and the add-on's client."""

from __future__ import annotations

import io
import json
import sys
import threading
from pathlib import Path

import pytest

from emotalker.worker.server import Cancelled, JobContext, Worker
from emotalker.core.base.errors import InputError
from emotalker.core.base.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blender_addon"))
from worker_client import WorkerClient, WorkerError, environment_python  # noqa: E402


def test_subprocess_worker_answers_and_reports_errors():
    client = WorkerClient(sys.executable)
    try:
        env = client.call("environment")
        assert env["protocol"] == "emotalker-worker/1" and "cpu" in env["devices"]
        with pytest.raises(WorkerError, match="unknown method 'nope'"):
            client.call("nope")
    finally:
        client.close()
    assert client.proc.returncode == 0


def run_worker(lines: list[str], methods, replies: int) -> list[dict]:
    """Feed `lines`, then keep stdin open until `replies` final answers are out (EOF cancels jobs)."""
    out = io.StringIO()

    def finals() -> int:
        return sum(1 for line in out.getvalue().splitlines() if '"result"' in line or '"error"' in line)

    def feed():
        yield from (line + "\n" for line in lines)
        for _ in range(1000):
            if finals() >= replies:
                return
            threading.Event().wait(0.01)

    Worker(feed(), out, methods).serve()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_progress_events_then_result_and_error_kinds():
    def steps(params, ctx):
        with Progress("count", params["n"], mode="json", sink=ctx.progress) as bar:
            for _ in range(params["n"]):
                bar.update()
        return {"done": params["n"]}

    def bad_input(params, ctx):
        raise InputError("clip.wav", "silent audio")

    def bug(params, ctx):
        raise ZeroDivisionError("oops")

    msgs = run_worker(['{"id": 1, "method": "steps", "params": {"n": 3}}', '{"id": 2, "method": "bad"}',
                       '{"id": 3, "method": "bug"}', "not json"],
                      {"steps": steps, "bad": bad_input, "bug": bug}, replies=4)
    by_id = {}
    for m in msgs:
        by_id.setdefault(m.get("id"), []).append(m)
    assert [m["step"] for m in by_id[1][:-1]] == [1, 2, 3] and by_id[1][-1] == {"id": 1, "result": {"done": 3}}
    assert by_id[2][0]["error"] == {"kind": "input", "message": "clip.wav: silent audio"}
    assert by_id[3][0]["error"]["kind"] == "internal" and "ZeroDivisionError" in by_id[3][0]["error"]["message"]
    assert any(m.get("error", {}).get("kind") == "protocol" for m in by_id[None])


def test_cancel_stops_a_running_job_at_its_next_progress_update():
    started, finished_steps = threading.Event(), []

    def long_job(params, ctx: JobContext):
        with Progress("long", 1000, mode="json", sink=ctx.progress) as bar:
            for i in range(1000):
                started.set()
                threading.Event().wait(0.01)
                finished_steps.append(i)
                bar.update()
        return {}

    class Feed(io.StringIO):
        """Sends the cancel only once the job is running."""

        def __iter__(self):
            yield '{"id": 1, "method": "long"}\n'
            started.wait(10)
            yield '{"id": 2, "method": "cancel", "params": {"target": 1}}\n'
            yield '{"method": "shutdown"}\n'

    out = io.StringIO()
    Worker(Feed(), out, {"long": long_job}).serve()
    msgs = [json.loads(line) for line in out.getvalue().splitlines()]
    final = [m for m in msgs if m.get("id") == 1 and "event" not in m]
    assert final == [{"id": 1, "error": {"kind": "cancelled", "message": "cancelled"}}]
    assert 0 < len(finished_steps) < 1000


def test_environment_python_names_the_folder_when_missing(tmp_path):
    with pytest.raises(WorkerError, match="no EmoTalker environment"):
        environment_python(str(tmp_path))


def test_cancelled_is_raised_by_the_context():
    ctx = JobContext(1, lambda m: None)
    ctx.cancel_event.set()
    with pytest.raises(Cancelled):
        ctx.progress({"step": 1})
