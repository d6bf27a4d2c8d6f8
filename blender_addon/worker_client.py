"""The add-on's side of the worker protocol (see emotalker/worker/server.py).

Standard library only: Blender's Python has no torch. A reader thread turns the
worker's stdout into a queue, so a modal operator can poll it from a timer
without ever blocking Blender's UI.

The worker reads and writes only under the files and folders its client
declares with `configure` (docs/architecture.md, "Worker trust model"): each
request names what it reads and writes (`submit(..., read=, write=)`), and the
client declares the union of everything named so far before sending it.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path


class WorkerError(RuntimeError):
    """The worker could not be started or answered with an error."""

    def __init__(self, message: str, kind: str = "internal"):
        super().__init__(message)
        self.kind = kind


def environment_python(env_path: str) -> Path:
    """The Python of the environment install.py made (`.venv` or its parent checkout)."""
    root = Path(env_path).expanduser()
    for candidate in (root / "bin" / "python", root / "Scripts" / "python.exe",
                      root / ".venv" / "bin" / "python", root / ".venv" / "Scripts" / "python.exe"):
        if candidate.exists():
            return candidate
    raise WorkerError(f"{root}: no EmoTalker environment here (run install.py and point the add-on at its .venv)", "input")


class WorkerClient:
    """One `emotalker worker` process. Not thread-safe: use from Blender's main thread."""

    def __init__(self, python: str | os.PathLike, extra_env: dict | None = None):
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        try:
            self.proc = subprocess.Popen(
                [str(python), "-m", "emotalker", "worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, bufsize=1, env=env,
            )
        except OSError as exc:
            raise WorkerError(f"could not start the worker with {python}: {exc}", "input") from None
        self._ids = itertools.count(1)
        self._roots: tuple[frozenset, frozenset] = (frozenset(), frozenset())
        self._messages: queue.Queue = queue.Queue()
        self._stderr_tail: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        ready = self._next_message(timeout=120.0)
        if ready is None or ready.get("event") != "ready":
            self.close()
            raise WorkerError("the worker did not start: " + self.stderr_tail())

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            try:
                self._messages.put(json.loads(line))
            except ValueError:
                self._stderr_tail.append(line)
        self._messages.put(None)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self._stderr_tail = (self._stderr_tail + [line])[-40:]

    def stderr_tail(self) -> str:
        return "".join(self._stderr_tail[-10:]).strip() or "(no output)"

    def _next_message(self, timeout: float | None) -> dict | None:
        try:
            return self._messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def submit(self, method: str, params: dict | None = None, *, read=(), write=()) -> int:
        """Send a request; returns its id. Replies arrive through `poll`.

        `params` must match the method's schema (emotalker/worker/methods.py): the
        worker answers an unknown, missing or mistyped field at once with an error
        of kind "input" naming it. `read` and `write`: the files and folders the
        request names, declared to the worker first (it refuses any other path)."""
        self.allow(read, write)
        job_id = next(self._ids)
        self._send({"id": job_id, "method": method, "params": params or {}})
        return job_id

    def allow(self, read=(), write=()) -> None:
        """Add files and folders the worker may read, and folders it may write into; sends `configure`
        when the set grows (the worker handles it before the next request, so no reply is awaited)."""
        roots = (self._roots[0] | {str(p) for p in read if p}, self._roots[1] | {str(p) for p in write if p})
        if roots != self._roots:
            self._roots = roots
            self._send({"id": next(self._ids), "method": "configure",
                        "params": {"read": sorted(roots[0]), "write": sorted(roots[1])}})

    def cancel(self, job_id: int) -> None:
        self._send({"id": next(self._ids), "method": "cancel", "params": {"target": job_id}})

    def _send(self, message: dict) -> None:
        if self.proc.poll() is not None:
            raise WorkerError("the worker has exited: " + self.stderr_tail())
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def poll(self) -> list[dict]:
        """Every message that has arrived, without waiting."""
        out = []
        while True:
            try:
                msg = self._messages.get_nowait()
            except queue.Empty:
                return out
            if msg is None:
                raise WorkerError("the worker exited: " + self.stderr_tail())
            out.append(msg)

    def call(self, method: str, params: dict | None = None, timeout: float = 600.0, on_progress=None, *,
             read=(), write=()) -> dict:
        """Submit and wait for the result (for short requests and tests)."""
        job_id = self.submit(method, params, read=read, write=write)
        while True:
            msg = self._next_message(timeout)
            if msg is None:
                raise WorkerError(f"no answer to {method!r}: " + self.stderr_tail())
            if msg.get("id") != job_id:
                continue
            if "error" in msg:
                raise WorkerError(msg["error"]["message"], msg["error"].get("kind", "internal"))
            if "result" in msg:
                return msg["result"]
            if on_progress is not None:
                on_progress(msg)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"method": "shutdown"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


if __name__ == "__main__":  # quick manual check: python worker_client.py /path/to/.venv
    client = WorkerClient(environment_python(sys.argv[1]))
    print(client.call("environment"))
    client.close()
