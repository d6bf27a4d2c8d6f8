"""A long request in the jobs lane's worker (a bake, an export, a training run) and the operator that drives it.

From the UI an operator is modal: progress in the status bar, Esc cancels,
Blender stays responsive while a timer polls the job. From scripts and in
background mode `execute` runs the same job to completion.
"""

from __future__ import annotations

import time

from .worker_client import WorkerClient, WorkerError

RUNNING: list["WorkerJob"] = []
"""The jobs running modally in this Blender session, oldest first (the panel shows their progress)."""


class WorkerJob:
    """Submit with `start`, then `poll` until `done`; `result` or `error` tell how it ended."""

    def __init__(self, client: WorkerClient, method: str, params: dict, *, read=(), write=()):
        """`read`, `write`: the paths `params` names, declared to the worker before the request."""
        self.client, self.method, self.params = client, method, params
        self.paths = (tuple(p for p in read if p), tuple(p for p in write if p))
        self.job_id: int | None = None
        self.fraction = 0.0
        self.message = "starting"
        self.result: dict | None = None
        self.error: str | None = None
        self.error_kind: str | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def start(self) -> None:
        self.job_id = self.client.submit(self.method, self.params, read=self.paths[0], write=self.paths[1])

    def on_progress(self, event: dict) -> None:
        """A progress event of this job: its stage's step of total (subclasses say more)."""
        total = max(int(event.get("total") or 1), 1)
        self.fraction = min(1.0, float(event.get("step", 0)) / total)
        self.message = f"{event.get('stage', self.method)} {event.get('step')}/{total}"

    def poll(self) -> None:
        try:
            messages = self.client.poll()
        except WorkerError as exc:
            self.error, self.error_kind = str(exc), exc.kind
            return
        for msg in messages:
            if msg.get("id") != self.job_id:
                continue
            if msg.get("event") == "progress":
                self.on_progress(msg)
            elif "result" in msg:
                self.result = msg["result"]
            elif "error" in msg:
                self.error, self.error_kind = msg["error"]["message"], msg["error"].get("kind")

    def cancel(self) -> None:
        if self.job_id is not None and not self.done:
            self.client.cancel(self.job_id)

    def wait(self, timeout: float = 3600.0) -> None:
        """Block until done (scripts and background mode, where no modal timer runs)."""
        end = time.monotonic() + timeout
        while not self.done and time.monotonic() < end:
            self.poll()
            time.sleep(0.05)
        if not self.done:
            self.cancel()
            self.error, self.error_kind = f"the {self.method} did not finish within {timeout:.0f} s", "timeout"


class JobOperator:
    """Mixin of the operators that run one WorkerJob: subclasses build it and say what to do when it ends."""

    bl_options = {"REGISTER"}
    _timer = None
    _job: WorkerJob | None = None

    def make_job(self, context) -> WorkerJob:
        raise NotImplementedError

    def finished(self, context, result: dict) -> None:
        raise NotImplementedError

    def cancelled_message(self) -> str:
        return "cancelled"

    def _start(self, context) -> bool:
        try:
            self._job = self.make_job(context)
            self._job.start()
        except (WorkerError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return False
        return True

    def _end(self, context) -> set[str]:
        job = self._job
        if job.error is not None:
            cancelled = job.error_kind == "cancelled"
            self.report({"WARNING"} if cancelled else {"ERROR"}, self.cancelled_message() if cancelled else job.error)
            return {"CANCELLED"}
        self.finished(context, job.result)
        return {"FINISHED"}

    def execute(self, context):
        import bpy

        if not self._start(context):
            return {"CANCELLED"}
        if bpy.app.background or context.window is None:  # scripts and tests: no event loop to poll from
            self._job.wait()
            return self._end(context)
        wm = context.window_manager
        RUNNING.append(self._job)
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 1000)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC":
            job.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        shown = job.message
        job.poll()
        context.window_manager.progress_update(int(job.fraction * 1000))
        if job.message != shown:
            context.workspace.status_text_set(f"EmoTalker: {job.message} (Esc to cancel)")
            redraw_sidebars(context)  # the panel's progress line; only the sidebars (a 3D view's redraw is costly)
        if not job.done:
            return {"RUNNING_MODAL"}
        RUNNING.remove(job)
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        context.workspace.status_text_set(None)
        return self._end(context)


def redraw_sidebars(context) -> None:
    for area in context.screen.areas if context.screen else ():
        if area.type == "VIEW_3D":
            for region in area.regions:
                if region.type == "UI":
                    region.tag_redraw()
