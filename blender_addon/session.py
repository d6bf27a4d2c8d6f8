"""The worker processes of this Blender session, started on first use.

Two lanes, each its own `emotalker worker` process: "jobs" (bakes, imports, F12)
and "preview" (the Rendered viewport), so that a running bake never holds the
viewport up, nor a viewport redraw a bake.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .preferences import settings
from .worker_client import WorkerClient, WorkerError, environment_python

_clients: dict[str, WorkerClient] = {}
_lock = threading.Lock()  # the preview lane starts its worker from its own thread


def python(context) -> Path:
    """The Python of the environment the preferences name (read on Blender's main thread)."""
    env, _device = settings(context)
    if not env:
        raise WorkerError("set the EmoTalker environment in the add-on preferences (install.py prints it)", "input")
    return environment_python(env)


def client(python_path: Path, lane: str = "jobs") -> WorkerClient:
    """The running worker of `lane`, started with `python_path` if needed (from any thread)."""
    with _lock:
        running = _clients.get(lane)
        if running is not None and running.proc.poll() is None:
            return running
        _clients[lane] = WorkerClient(python_path)
        return _clients[lane]


def worker(context) -> WorkerClient:
    """The jobs lane's worker, started from the preferences' environment if needed."""
    return client(python(context), "jobs")


def device(context) -> str:
    return settings(context)[1]


def shutdown() -> None:
    with _lock:
        for running in _clients.values():
            running.close()
        _clients.clear()
