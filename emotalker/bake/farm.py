"""Clips as Ray tasks: `emotalker bake-batch --engine ray` (the `farm` extra; docs/farm.md).

Ray schedules each clip as a task with the CPUs and GPUs it asks for
(`--cpus-per-job`, `--gpus-per-job`) on a laptop (`ray.init()` starts a private
cluster), on a `ray start` cluster or on Kubernetes through KubeRay, the same
code everywhere. What runs in the task is the batch's own `_run_clip`, and its
outcome is settled by the batch as a local clip's is (emotalker/bake/batch.py).

- Retries are the batch's, not Ray's: tasks are submitted with Ray's
  `max_retries=0`, and a task whose worker or node is lost comes back as
  ("lost", why), which the batch resubmits (`--max-retries`) and records, so
  the summary says which clips were retried and why, as it does locally.
- Outputs go straight to each clip's folder, which every node must see (shared
  storage): frames are written atomically and resumed, so a clip retried on
  another node continues from the frames the lost task finished.
- Ray keeps a worker process between tasks: the job (`bake_clip_job`) keeps
  the avatar it loaded for the next clip with the same avatar (AvatarCache).
"""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass
from typing import Any, Callable

from emotalker.core.base.errors import InputError

RAY_VERSION = "2.60.0"
"""The version the `farm` extra pins (and the tests ran against)."""
POLL_S = 0.2
"""How often waiting on Ray looks at the signal pipe too."""


@dataclass(frozen=True)
class RayOptions:
    """Where the Ray tasks run and what each one asks of a node."""

    address: str | None = None
    """None: a private cluster on this machine; "auto": the cluster `ray start` made here; or HOST:PORT."""
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0


def import_ray():
    """The ray module, or one InputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("--engine", f"ray is not installed: pip install 'emotalker[farm]' (ray=={RAY_VERSION})") from None
    return ray


def check_options(options: RayOptions) -> None:
    if not options.cpus_per_job > 0:
        raise InputError("--cpus-per-job", f"must be positive, got {options.cpus_per_job}")
    if not options.gpus_per_job >= 0:
        raise InputError("--gpus-per-job", f"must be 0 or more, got {options.gpus_per_job}")


def _ray_clip(job_fn: Callable, job: Any) -> tuple[bool, Any]:
    """The task: one clip, run as a local clip's process runs it -> (ok, result or reason)."""
    from emotalker.bake.batch import _run_clip

    return _run_clip(job_fn, job)


class RayTasks:
    """The running clips as Ray tasks: the batch's engine interface (start, wait, stop, running, capacity)."""

    def __init__(self, job_fn: Callable, options: RayOptions):
        check_options(options)
        self._job_fn, self._options = job_fn, options
        self.running: dict[Any, Any] = {}  # ObjectRef -> ClipJob
        self.capacity = 1

    def __enter__(self) -> RayTasks:
        ray = self._ray = import_ray()
        # A caller already connected (a program of its own on Ray, a benchmark) keeps its connection.
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            _check_reachable(self._options.address)
            try:
                ray.init(address=self._options.address, log_to_driver=False, configure_logging=False)
            except ConnectionError as exc:
                raise InputError("--address", f"no Ray cluster there ({self._options.address}): "
                                              f"{str(exc).splitlines()[0]}") from None
        if self._options.gpus_per_job and not ray.cluster_resources().get("GPU"):
            self.__exit__()
            raise InputError("--gpus-per-job", "the Ray cluster has no GPU (start its nodes with --num-gpus)")
        self._task = ray.remote(_ray_clip).options(num_cpus=self._options.cpus_per_job,
                                                   num_gpus=self._options.gpus_per_job,
                                                   max_retries=0, retry_exceptions=False)
        self.capacity = max(1, int(ray.cluster_resources().get("CPU", 1) // self._options.cpus_per_job))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self._owns_connection:
            self._ray.shutdown()

    @property
    def running_ids(self) -> list[str]:
        return [job.id for job in self.running.values()]

    def start(self, job: Any) -> None:
        self.running[self._task.remote(self._job_fn, job)] = job

    def wait(self, *fds: int) -> list[tuple[Any, tuple[str, Any]]]:
        """Block until a task ends or one of `fds` is readable -> the clips that ended, with their outcomes."""
        refs = list(self.running)
        while not self._ray.wait(refs, num_returns=1, timeout=POLL_S)[0]:
            if fds and select.select(fds, [], [], 0)[0]:
                return []
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        return [(self.running.pop(ref), self._outcome(ref)) for ref in ready]

    def _outcome(self, ref: Any) -> tuple[str, Any]:
        """("done", result) or ("failed", reason) from the task; ("lost", why) when Ray lost it."""
        exceptions = self._ray.exceptions
        try:
            ok, detail = self._ray.get(ref)
        except exceptions.RayTaskError as exc:  # raised in the task, outside _run_clip (unpickling the job)
            return "failed", f"Ray task failed: {_first_line(exc.cause if exc.cause else exc)}"
        except exceptions.RayError as exc:  # worker or node died, object lost, task cancelled...
            return "lost", f"Ray task lost ({type(exc).__name__}: {_first_line(exc)})"
        return ("done" if ok else "failed"), detail

    def stop(self) -> list[str]:
        """Cancel every running task (its worker process is killed) -> the clips stopped."""
        stopped = self.running_ids
        for ref in self.running:
            self._ray.cancel(ref, force=True)
        self.running.clear()
        return stopped


def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """A HOST:PORT that nothing answers on is one InputError now (ray.init would retry for minutes)."""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError("--address", f"expected auto or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InputError("--address", f"no Ray cluster answers at {address}: {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
