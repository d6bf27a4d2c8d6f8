"""Fuzzing (issue 18): mutated worker requests, tracks files and batch manifests, from a seeded RNG.

(a) One `python -m emotalker worker` (under a memory limit) gets 10,000 mutated requests over its
stdin: keys dropped or renamed, values of the wrong type, huge numbers, NaN, deep nesting, long
strings, bad UTF-8, truncated and over-long lines, unknown methods, paths outside its roots. It must
answer every line once (with the line's id when the line has a valid one), stay alive, answer a valid
`environment` request at the end and exit cleanly. The requests that pass validation name an avatar
that does not exist, so every job fails at once and the fuzz stays fast.

(b) The tracks loader and the batch manifest loader read mutated files through the library
(`Tracks.load`, `load_manifest`) in a subprocess under RLIMIT_AS: each file gives a valid result or
an InputError, never another exception, and nothing asks for unbounded memory.
"""

from __future__ import annotations

import copy
import json
import os
import random
import resource
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MEMORY_LIMIT = 3 << 30
"""The worker imports torch (about 2 GiB of address space); far below what an unbounded request asks."""
LOADER_MEMORY_LIMIT = 2 << 30
SEED = 18
N_REQUESTS = 10_000
N_FILES = 2_000


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"),
                                                         os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _limit(nbytes: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))


# --- mutations -------------------------------------------------------------------------------------


def deep(levels: int) -> Any:
    """`levels` nested lists, built without recursion."""
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def junk_value(rng: random.Random, paths: list[str]) -> Any:
    """A value of a random kind: wrong types, extremes, non-finite numbers, hostile paths."""
    kind = rng.randrange(16)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 1, 2**31, -2**63, 2**64, 10**300, 7])
    if kind == 2:
        return rng.choice([0.5, -1e-9, 1e9, 1e308, -1e308, 1e-320])
    if kind == 3:
        return rng.choice([float("nan"), float("inf"), -float("inf")])  # written as NaN, Infinity
    if kind == 4:
        return "x" * rng.choice([0, 1, 255, 4096, 70_000])
    if kind == 5:
        return rng.choice(["", "\x00", "é", "\ud800", "\u202e", "1:3", "3:1", "-5:2", "a:b", "happy"])
    if kind == 6:
        return rng.choice(paths)
    if kind == 7:
        return []
    if kind == 8:
        return {}
    if kind == 9:
        return deep(rng.choice([3, 99, 101, 500]))
    if kind == 10:
        return {"a": [1, {"b": None}]}
    if kind == 11:
        return [rng.random() for _ in range(rng.randrange(1, 6))]
    if kind == 12:
        return [[1, 0, 0, 0]] * rng.randrange(0, 6)
    if kind == 13:
        return rng.choice(["cpu", "cuda", "auto", "bar", "json", "none", "y", "z"])
    if kind == 14:
        return rng.randrange(-3, 300)
    return rng.random() * 3


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in `doc`, walked without recursion."""
    slots, todo = [], [doc]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            slots.append((node, key))
            if isinstance(value, (dict, list)) and len(slots) < 10_000:
                todo.append(value)
    return slots


def mutate(rng: random.Random, doc: Any, paths: list[str], keys: list[str]) -> Any:
    """`doc` with one to three random edits: a value replaced, a key dropped, renamed or added, a list
    item removed or duplicated, or the whole document replaced."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        slots = _slots(doc)
        if not slots or rng.random() < 0.03:
            doc = junk_value(rng, paths)
            continue
        node, key = rng.choice(slots)
        op = rng.randrange(6)
        if op <= 2:
            node[key] = junk_value(rng, paths)
        elif op == 3 and isinstance(node, dict):
            del node[key]
        elif op == 4 and isinstance(node, dict):
            node[rng.choice(keys + [key + "_", key.upper(), ""])] = node.pop(key)
        elif isinstance(node, list):
            node.insert(key, node[key]) if rng.random() < 0.5 else node.pop(key)
        else:
            node[rng.choice(keys)] = junk_value(rng, paths)
    return doc


def encode(rng: random.Random, doc: Any) -> bytes:
    """`doc` as one JSON line's bytes (no newline), sometimes damaged: truncated, bad UTF-8, stray bytes."""
    raw = json.dumps(doc).encode()
    roll = rng.random()
    if roll < 0.05 and raw:
        return raw[:rng.randrange(len(raw))]
    if roll < 0.10:
        at = rng.randrange(len(raw) + 1)
        return raw[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\x00"]) + raw[at:]
    if roll < 0.13 and raw:
        at = rng.randrange(len(raw))
        return raw[:at] + bytes([rng.choice([b for b in range(256) if b != 10])]) + raw[at + 1:]
    return raw


# --- (a) the worker --------------------------------------------------------------------------------


def worker_templates(inp: Path, out: Path) -> list[dict]:
    """Valid requests (but for the avatar, which does not exist), one per method, params filled in."""
    camera = {"viewmat": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]],
              "K": [[50, 0, 16], [0, 50, 16], [0, 0, 1]], "width": 32, "height": 32}
    avatar = str(inp / "no_avatar")
    return [
        {"method": "environment"},
        {"method": "cancel", "params": {"target": 3}},
        {"method": "bake", "params": {"clip": {"avatar": avatar, "audio": str(inp / "a.wav"), "out": str(out / "o"),
                                               "tracks": str(inp / "t.json"), "fps": 25, "frames": "1:3",
                                               "png": True, "resolution": 16},
                                      "run": {"device": "cpu", "threads": 1, "chunk": 2}}},
        {"method": "render_frame", "params": {"avatar": avatar, "cache": str(out / "c"), "frame": 3,
                                              "curves": str(inp / "c.npz"), "no_emotion": True, **camera}},
        {"method": "avatar_proxy", "params": {"avatar": avatar, "out": str(out / "p")}},
        {"method": "no_such_method", "params": {}},
    ]


def fuzz_lines(inp: Path, out: Path, outside: Path, n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    templates = worker_templates(inp, out)
    paths = ["/etc/passwd", str(outside), str(inp / ".." / "elsewhere"), str(out / ".." / ".." / "x"),
             str(inp / "link_out" / "f"), "~/x", "relative/path", str(inp / "a.wav"), str(out / "o")]
    keys = ["id", "method", "params", "clip", "run", "avatar", "out", "target", "frame", "shutdown_"]
    lines = []
    for i in range(n):
        request = {"id": rng.choice([i, f"r{i}"]), **copy.deepcopy(rng.choice(templates))}
        roll = rng.random()
        if roll < 0.002:
            lines.append(b"[" * 100_000 + b"]" * 100_000)  # 100,000-deep nesting
        elif roll < 0.003:
            lines.append(b'{"id": %d, "method": "environment", "params": {"x": "%s"}}' % (i, b"y" * (1 << 20)))
        else:
            lines.append(encode(rng, mutate(rng, request, paths, keys) if roll > 0.05 else request))
    return [line for line in lines if line.strip()]  # a blank line asks for nothing and gets no reply


def expected_id(line: bytes) -> Any:
    """The id a reply to `line` carries: the line's own when it is one JSON object with a valid id."""
    from emotalker.core.base.errors import InputError
    from emotalker.core.base.fileio import parse_json
    from emotalker.worker.server import is_id

    try:
        data = parse_json(line.decode("utf-8"), None, allow_nan=False) if len(line) <= 1 << 20 else None
    except (UnicodeDecodeError, InputError):
        return None
    return data["id"] if isinstance(data, dict) and is_id(data.get("id")) else None


def test_the_worker_answers_10000_mutated_requests_and_stays_alive(tmp_path):
    inp, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    for folder in (inp, out, outside):
        folder.mkdir()
    (inp / "link_out").symlink_to(outside)  # a symlink inside the read root that leads out of it
    lines = fuzz_lines(inp, out, outside, N_REQUESTS, SEED)
    proc = subprocess.Popen([sys.executable, "-m", "emotalker", "worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(), preexec_fn=_limit(MEMORY_LIMIT))

    def feed():
        proc.stdin.write(json.dumps({"id": "roots", "method": "configure",
                                     "params": {"read": [str(inp)], "write": [str(out)]}}).encode() + b"\n")
        for line in lines:
            proc.stdin.write(line + b"\n")
        proc.stdin.flush()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    watchdog = threading.Timer(300, proc.kill)  # a hung worker fails the test instead of hanging it
    watchdog.start()
    finals, alive = [], None
    try:
        for raw in proc.stdout:
            reply = json.loads(raw)
            if "result" in reply or "error" in reply:
                finals.append(reply)
            if len(finals) == len(lines) + 1 and alive is None:  # every line answered: now the check
                writer.join()
                proc.stdin.write(b'{"id": "alive", "method": "environment"}\n')
                proc.stdin.flush()
                alive = False
            if reply.get("id") == "alive" and "result" in reply:
                alive = reply
                break
        proc.stdin.write(b'{"method": "shutdown"}\n')
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
        proc.kill()
    assert finals[0] == {"id": "roots", "result": {"read": [os.path.realpath(inp)], "write": [os.path.realpath(out)]}}
    replies = finals[1:-1]
    assert len(replies) == len(lines)  # one final reply a line, none twice
    assert alive and alive["result"]["protocol"] == "emotalker-worker/1"
    assert Counter(r["id"] for r in replies if r.get("id") is not None) == \
        Counter(i for i in map(expected_id, lines) if i is not None)
    kinds = Counter(r["error"]["kind"] if "error" in r else "result" for r in replies)
    assert kinds["protocol"] > 1000 and kinds["input"] > 1000 and kinds["result"] > 100, kinds
    assert not any(kind == "internal" for kind in kinds), [r for r in replies if "internal" in json.dumps(r)][:3]
    messages = [r["error"]["message"] for r in replies if "error" in r]
    assert any("is outside the folders this worker may read" in m for m in messages)
    assert any("is outside the folders this worker may write" in m for m in messages)
    assert any("longer than 1048576 bytes" in m for m in messages)
    assert any("nests 100000 levels deep" in m for m in messages)
    assert any("not UTF-8" in m for m in messages) and any("NaN is not a JSON number" in m for m in messages)
    assert not list(outside.iterdir()) and not list(out.iterdir())  # nothing written anywhere


# --- (b) the tracks and manifest loaders -----------------------------------------------------------

TRACKS = {"format": "emotalker-tracks/1", "fps": 25,
          "tracks": {"emotion.happy": {"interpolation": "bezier", "keys": [[1, 0.0], [40, 1.0]]},
                     "emotion.sad": {"smoothing": "none", "keys": [[1, 0.2], [10, 0.5], [20, 0.1], [30, 0.9]]},
                     "intensity": {"interpolation": "linear", "keys": [[1, 1.0], [80, 2.5]]},
                     "blink": {"interpolation": "constant", "keys": [[1, 0.0], [5, 1.0], [9, 0.0]]}}}
MANIFEST = {"format": "emotalker-batch/1",
            "defaults": {"avatar": "avatar", "emotion": "happy", "fps": 25, "frames": "1:3", "intensity": 1.5},
            "clips": [{"id": "a", "audio": "a.wav"},
                      {"id": "b", "audio": "b.wav", "out": "o/b", "png": True, "resolution": 64, "camera": "c.json",
                       "tracks": "t.json", "emotion": None, "background": [0, 0, 0], "up_axis": "z"}]}


def _load_tracks(path: Path) -> None:
    import numpy as np

    from emotalker.bake.tracks import Tracks

    Tracks.load(path).evaluate(np.arange(-5, 100))


def _load_manifest(path: Path) -> None:
    from emotalker.bake.batch import load_manifest

    load_manifest(path)


def fuzz_loader(kind: str, n: int, seed: int, folder: str) -> dict:
    """Run in a subprocess under RLIMIT_AS: `n` mutated files of `kind` through its loader.
    -> {"valid", "refused", "failures": [first few (exception, file text)]}."""
    from emotalker.core.base.errors import InputError
    from emotalker.core.base.limits import MAX_JSON_BYTES

    template, load = {"tracks": (TRACKS, _load_tracks), "manifest": (MANIFEST, _load_manifest)}[kind]
    rng = random.Random(seed)
    paths = ["/etc/passwd", "../../x", "~/x", "", "a.wav", "o/../../b"]
    keys = ["format", "fps", "tracks", "keys", "interpolation", "smoothing", "defaults", "clips", "id", "audio",
            "out", "emotion.happy", "emotion.nope", "blink"]
    path, counts, failures = Path(folder) / f"{kind}.json", Counter(), []
    for i in range(n + 1):
        if i == n:  # once: a file past the size limit, refused from its size alone
            path.write_bytes(b"")
            os.truncate(path, MAX_JSON_BYTES + 1)
        else:
            path.write_bytes(encode(rng, mutate(rng, template, paths, keys) if i else template))
        try:
            load(path)
            counts["valid"] += 1
        except InputError:
            counts["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzz looks for
            failures.append((f"{type(exc).__name__}: {exc}"[:300], path.read_bytes()[:300].decode("latin1")))
    return {**counts, "failures": failures[:5], "n_failures": len(failures)}


def _run_loader_fuzz(kind: str, tmp_path: Path) -> dict:
    code = f"import json, test_fuzz; print(json.dumps(test_fuzz.fuzz_loader({kind!r}, {N_FILES}, {SEED}, {str(tmp_path)!r})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                          preexec_fn=_limit(LOADER_MEMORY_LIMIT), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mutated_tracks_files_load_or_give_one_input_error(tmp_path):
    result = _run_loader_fuzz("tracks", tmp_path)
    assert result["n_failures"] == 0, result["failures"]
    assert result["valid"] >= 50 and result["refused"] > 1000, result


def test_mutated_batch_manifests_load_or_give_one_input_error(tmp_path):
    result = _run_loader_fuzz("manifest", tmp_path)
    assert result["n_failures"] == 0, result["failures"]
    assert result["valid"] >= 50 and result["refused"] > 1000, result
