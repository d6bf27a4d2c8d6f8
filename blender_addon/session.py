"""The one worker process of this Blender session, started on first use."""

from __future__ import annotations

from .preferences import settings
from .worker_client import WorkerClient, WorkerError, environment_python

_client: WorkerClient | None = None


def worker(context) -> WorkerClient:
    """The running worker, started from the preferences' environment if needed."""
    global _client
    if _client is not None and _client.proc.poll() is None:
        return _client
    env, _device = settings(context)
    if not env:
        raise WorkerError("set the EmoTalker environment in the add-on preferences (install.py prints it)", "input")
    _client = WorkerClient(environment_python(env))
    return _client


def device(context) -> str:
    return settings(context)[1]


def shutdown() -> None:
    global _client
    if _client is not None:
        _client.close()
        _client = None
