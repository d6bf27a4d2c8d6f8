"""The worker protocol, end to end through a real subprocess and the add-on's client."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from emotalker.worker.server import Cancelled, JobContext, Method, NoParams, Worker
from emotalker.core.base.errors import InputError
from emotalker.core.base.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blender_addon"))
from worker_client import WorkerClient, WorkerError, environment_python  # noqa: E402


@dataclass(frozen=True)
class Count:
    n: int
    """How many steps."""


def test_subprocess_worker_answers_and_reports_errors():
    client = WorkerClient(sys.executable)
    try:
        env = client.call("environment")
        assert env["protocol"] == "emotalker-worker/1" and "cpu" in env["devices"]
        with pytest.raises(WorkerError, match="unknown method 'nope'"):
            client.call("nope")
        # A param the method's schema lacks is an input error naming it, answered before the job runs.
        with pytest.raises(WorkerError, match=r"^bake params: missing field clip\.audio$") as err:
            client.call("bake", {"clip": {"avatar": "a", "out": "o"}})
        assert err.value.kind == "input"
        assert client.call("environment")["protocol"] == "emotalker-worker/1"  # still serving
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
    def steps(params: Count, ctx):
        with Progress("count", params.n, mode="json", sink=ctx.progress) as bar:
            for _ in range(params.n):
                bar.update()
        return {"done": params.n}

    def bad_input(params, ctx):
        raise InputError("clip.wav", "silent audio")

    def bug(params, ctx):
        raise ZeroDivisionError("oops")

    msgs = run_worker(['{"id": 1, "method": "steps", "params": {"n": 3}}', '{"id": 2, "method": "bad"}',
                       '{"id": 3, "method": "bug"}', "not json"],
                      {"steps": Method(Count, steps), "bad": Method(NoParams, bad_input), "bug": Method(NoParams, bug)},
                      replies=4)
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
    Worker(Feed(), out, {"long": Method(NoParams, long_job)}).serve()
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


def echo(params: Count, ctx) -> dict:
    return {"n": params.n}


def _final(msgs: list[dict]) -> list[tuple]:
    """(id, error kind or "result") of every final reply, in the order sent."""
    return [(m.get("id"), m["error"]["kind"] if "error" in m else "result")
            for m in msgs if "error" in m or "result" in m]


def test_each_methods_params_are_checked_on_arrival_naming_the_field():
    from emotalker.worker.methods import METHODS

    clip = {"avatar": "a", "audio": "b.wav", "out": "o"}
    camera = {"viewmat": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]],
              "K": [[50, 0, 16], [0, 50, 16], [0, 0, 1]], "width": 32, "height": 32}
    requests = {
        "bake params: unknown field clip.fsp (known: audio, avatar, background,":
            ("bake", {"clip": {**clip, "fsp": 25}}),
        "bake params: missing field clip.out": ("bake", {"clip": {"avatar": "a", "audio": "b.wav"}}),
        "bake params: missing field clip": ("bake", {"run": {"device": "cpu"}}),
        "bake params: run.threads must be an integer, got '2'": ("bake", {"clip": clip, "run": {"threads": "2"}}),
        "bake params: run.progress must be one of 'bar', 'json', 'none', got 'loud'":
            ("bake", {"clip": clip, "run": {"progress": "loud"}}),
        "bake params: clip.ply must be true or false, got 1": ("bake", {"clip": {**clip, "ply": 1}}),
        "bake params: unknown field device (known: clip, run)": ("bake", {"clip": clip, "device": "cpu"}),
        "render_frame params: frame must be an integer, got '3'":
            ("render_frame", {"avatar": "a", "cache": "c", "frame": "3", **camera}),
        "render_frame params: viewmat[1] must be a list, got float":
            ("render_frame", {"avatar": "a", "cache": "c", "frame": 3, **camera, "viewmat": [[1, 0, 0, 0], 1.0]}),
        "render_frame params: missing field height":
            ("render_frame", {"avatar": "a", "cache": "c", "frame": 3,
                              **{k: camera[k] for k in ("viewmat", "K", "width")}}),
        "avatar_proxy params: missing field out": ("avatar_proxy", {"avatar": "a"}),
        "environment params: unknown field verbose (known: )": ("environment", {"verbose": True}),
    }
    lines = [json.dumps({"id": i, "method": m, "params": p}) for i, (m, p) in enumerate(requests.values())]
    lines.append(json.dumps({"id": "last", "method": "echo", "params": {"n": 5}}))
    from emotalker.worker.server import default_methods

    methods = {**default_methods(), "echo": Method(Count, echo)}
    assert {"avatar_proxy", "bake", "render_frame"} <= set(METHODS) and set(METHODS) <= set(methods)
    msgs = run_worker(lines, methods, replies=len(lines))
    errors = {m["id"]: m["error"] for m in msgs if "error" in m}
    for i, expected in enumerate(requests):
        assert errors[i]["kind"] == "input" and errors[i]["message"].startswith(expected), (expected, errors[i])
    assert [m for m in msgs if m.get("id") == "last"] == [{"id": "last", "result": {"n": 5}}]  # still serving


def test_malformed_requests_get_one_protocol_error_each_and_the_worker_keeps_serving():
    lines = [
        "not json",
        "[1, 2]",
        '{"id": 1.5, "method": "echo", "params": {"n": 1}}',
        '{"id": true, "method": "echo", "params": {"n": 1}}',
        '{"id": [1], "method": "echo", "params": {"n": 1}}',
        '{"method": "echo", "params": {"n": 1}}',
        '{"id": 2, "method": "echo", "params": [1]}',
        '{"id": 3, "method": "echo", "params": {"n": 1}, "parms": {}}',
        '{"id": 4, "method": 7}',
        '{"id": 5}',
        '{"id": 6, "method": "cancel", "params": {"target": [1]}}',
        '{"id": 7, "method": "cancel", "params": {"target": 1.5}}',
        '{"id": 8, "method": "cancel", "params": {}}',
        '{"id": 9, "method": "cancel", "params": "all"}',
        '{"id": "c", "method": "cancel", "params": {"target": 99}}',
        '{"id": "ok", "method": "echo", "params": {"n": 2}}',
    ]
    msgs = run_worker(lines, {"echo": Method(Count, echo)}, replies=len(lines))
    finals = _final(msgs)
    assert len(finals) == len(lines)  # one reply a line
    refused = [f for f in finals if f[0] not in ("c", "ok")]
    assert refused == [(None, "protocol")] * 6 + [(i, "protocol") for i in range(2, 10)]
    by_id = {m.get("id"): m for m in msgs if m.get("id") is not None}
    assert "id must be a string or an integer, got 1.5" in msgs[3]["error"]["message"]
    assert "needs an 'id'" in msgs[6]["error"]["message"]
    assert "params must be an object, got list" in by_id[2]["error"]["message"]
    assert "unknown field parms" in by_id[3]["error"]["message"]
    assert "method must be a string" in by_id[4]["error"]["message"]
    assert "missing field method" in by_id[5]["error"]["message"]
    assert "target must be a job's id" in by_id[6]["error"]["message"]
    assert "missing field target" in by_id[8]["error"]["message"]
    assert by_id["c"] == {"id": "c", "result": {"cancelled": 99, "was_running": False}}
    assert by_id["ok"] == {"id": "ok", "result": {"n": 2}}


def test_an_id_in_use_by_an_unfinished_job_is_refused():
    started, release = threading.Event(), threading.Event()
    out = io.StringIO()

    def hold(params, ctx):
        started.set()
        release.wait(10)
        return {"held": True}

    def feed():
        yield '{"id": 1, "method": "hold"}\n'
        started.wait(10)
        yield '{"id": 1, "method": "hold"}\n'
        for _ in range(1000):
            if '"protocol"' in out.getvalue():
                break
            threading.Event().wait(0.01)
        release.set()
        for _ in range(1000):  # once the job's reply is out, its id is free again
            if '"held"' in out.getvalue():
                break
            threading.Event().wait(0.01)
        yield '{"id": 1, "method": "echo", "params": {"n": 1}}\n'
        for _ in range(1000):
            if '"n": 1' in out.getvalue():
                return
            threading.Event().wait(0.01)

    Worker(feed(), out, {"hold": Method(NoParams, hold), "echo": Method(Count, echo)}).serve()
    replies = [json.loads(line) for line in out.getvalue().splitlines()][1:]
    assert replies[0] == {"id": 1, "error": {"kind": "protocol", "message": "bad request: id 1 belongs to a job "
                                                                             "that has not finished"}}
    assert replies[1:] == [{"id": 1, "result": {"held": True}}, {"id": 1, "result": {"n": 1}}]


@dataclass(frozen=True)
class Copy:
    src: str
    """A file to read."""
    dst: str
    """A folder to write into."""


def test_paths_outside_the_configured_roots_are_refused_before_the_job_runs(tmp_path):
    from emotalker.worker.server import PathUse, default_methods

    inp, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    for folder in (inp, out, outside):
        folder.mkdir()
    (inp / "link").symlink_to(outside)
    ran = []

    def copy(params: Copy, ctx) -> dict:
        ran.append(params)
        return {"copied": True}

    methods = {**default_methods(), "copy": Method(Copy, copy, lambda p: PathUse(read=(p.src,), write=(p.dst,)))}
    req = lambda i, method, **params: json.dumps({"id": i, "method": method, "params": params})  # noqa: E731
    lines = [
        req(0, "copy", src=str(inp / "a"), dst=str(out)),  # nothing declared yet
        req(1, "configure", read=[str(inp)], write=[str(out)]),
        req(2, "copy", src=str(inp / "a"), dst=str(out / "sub")),
        req(3, "copy", src=str(out / "b"), dst=str(out)),  # the write root is readable
        req(4, "copy", src=str(inp / ".." / "outside" / "a"), dst=str(out)),
        req(5, "copy", src=str(inp / "link" / "a"), dst=str(out)),
        req(6, "copy", src=str(inp / "a"), dst=str(inp)),  # a read root is not writable
        req(7, "copy", src=str(inp / "a"), dst=str(out) + "_sibling"),  # a prefix is not a parent
        req(8, "copy", src="in\0a", dst=str(out)),
        req(9, "configure", read=[""]),
        req(10, "configure", read="everything"),
        req(11, "avatar_proxy", avatar=str(outside), out=str(out)),  # the real methods declare their paths
        req(12, "render_frame", avatar=str(inp), cache=str(outside), frame=1, viewmat=[], K=[], width=1, height=1),
        req(13, "configure"),  # back to nothing allowed
        req(14, "copy", src=str(inp / "a"), dst=str(out)),
    ]
    msgs = run_worker(lines, methods, replies=len(lines))
    by_id = {m["id"]: m for m in msgs if "result" in m or "error" in m}
    error = lambda i: by_id[i]["error"]["kind"] + ": " + by_id[i]["error"]["message"]  # noqa: E731
    real = os.path.realpath
    assert error(0) == (f"input: copy params: {str(inp / 'a')!r} is outside the folders this worker may read "
                        f"(none declared; send configure first)")
    assert by_id[1]["result"] == {"read": [real(inp)], "write": [real(out)]}
    assert by_id[2]["result"] == by_id[3]["result"] == {"copied": True}
    assert [p.src for p in ran] == [str(inp / "a"), str(out / "b")]
    for i, path in ((4, inp / ".." / "outside" / "a"), (5, inp / "link" / "a")):
        assert error(i) == (f"input: copy params: {str(path)!r} is outside the folders this worker may read "
                            f"({real(inp)}, {real(out)})")
    assert error(6) == f"input: copy params: {str(inp)!r} is outside the folders this worker may write ({real(out)})"
    assert "may write" in error(7)
    assert error(8) == "input: copy params: 'in\\x00a' is not a valid path (embedded null byte)"
    assert error(9) == "input: configure params: read holds an empty path"
    assert error(10).startswith("input: configure params: read must be a list")
    assert error(11).startswith(f"input: avatar_proxy params: {str(outside)!r} is outside the folders")
    assert error(12).startswith(f"input: render_frame params: {str(outside)!r} is outside the folders this worker may "
                                f"write")
    assert by_id[13]["result"] == {"read": [], "write": []}
    assert "none declared" in error(14)
    assert len(ran) == 2
