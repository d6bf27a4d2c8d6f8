"""Train an avatar from a dataset folder, in the worker, and import it when done.

The operator asks for the dataset, the avatar folder and the steps, then runs
the worker's `train` (emotalker/worker/methods.py) as a JobOperator: per-stage
progress and each finished stage's held-out PSNR in the status bar, Esc
cancels (the step reached is checkpointed), and the same operator again
resumes from there. After all stages the worker writes the avatar report,
which opens in the web browser.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import session
from .job import JobOperator, WorkerJob

STAGES = ("neutral", "a2e", "emotion")
STAGE_TITLES = {"neutral": "Stage 1", "a2e": "A2E", "emotion": "Stage 2"}


class TrainJob(WorkerJob):
    """One `train` request; its message tells the stage, the step and the held-out PSNR of stages done."""

    def __init__(self, client, dataset: str, avatar: str, stage: str = "all", steps: dict | None = None,
                 resume: bool = True, device: str = "auto", gaussians: int = 0, minutes: float = 0.0):
        """`steps`: {stage: steps} for the stages whose default is not wanted; `gaussians`: Stage 1's
        initial count (0: its default); `minutes`: a time budget for the stage or the whole run (0: the
        device's default for all stages, which is 30 minutes on a CPU unless steps are given)."""
        self.stages = STAGES if stage == "all" else (stage,)
        config = {name: {"steps": int(n)} for name, n in (steps or {}).items()}
        if gaussians:
            config.setdefault("neutral", {})["model"] = {"n_gaussians": int(gaussians)}
        if minutes > 0:
            if stage == "all":
                config["minutes"] = float(minutes)
            else:
                config.setdefault(stage, {})["minutes"] = float(minutes)
        self.plan: list[str] = []
        self.planned = ""
        params = {"dataset": dataset, "avatar": avatar, "stage": stage, "resume": resume, "device": device,
                  "config": config}
        super().__init__(client, "train", params, read=[dataset], write=[avatar])
        self.held_out: dict[str, float | None] = {}
        self.summaries: list[str] = []

    def on_progress(self, event: dict) -> None:
        stage = str(event.get("stage", "")).removeprefix("train ")
        if stage == "plan":  # before the first step: what will be trained and for how long
            self.plan = list(event.get("lines", []))
            self.planned = f"; about {event.get('estimate_minutes') or 0:.0f} min planned"
            self.message = "planned: " + ", ".join(
                f"{STAGE_TITLES.get(s['stage'], s['stage'])} {s['steps']} steps" for s in event.get("stages", [])) + self.planned
            return
        if stage == "report":  # after every stage: the avatar report
            self.message = f"writing the avatar report{self._held_out_text()}"
            return
        index = self.stages.index(stage) if stage in self.stages else 0
        if event.get("finished"):
            self.held_out[stage] = event.get("held_out_psnr")
            self.summaries.append(event.get("summary", ""))
            self.fraction = (index + 1) / len(self.stages)
        else:
            total = max(int(event.get("total") or 1), 1)
            step = int(event.get("step", 0))
            self.fraction = (index + min(step / total, 1.0)) / len(self.stages)
            psnr = f", PSNR {event['psnr']:.1f} dB" if isinstance(event.get("psnr"), (int, float)) else ""
            self.message = (f"{STAGE_TITLES.get(stage, stage)} ({index + 1} of {len(self.stages)}) "
                            f"step {step}/{total}{psnr}{self._held_out_text()}{self.planned}")

    def _held_out_text(self) -> str:
        done = [f"{STAGE_TITLES[s]} {v:.2f} dB" for s, v in self.held_out.items() if v is not None]
        return f"; held-out PSNR: {', '.join(done)}" if done else ""


class EMOTALKER_OT_train_avatar(JobOperator, bpy.types.Operator):
    """Train an avatar from a dataset folder (every stage or one) and import it when done"""

    bl_idname = "emotalker.train_avatar"
    bl_label = "Train EmoTalker Avatar"

    dataset: StringProperty(name="Dataset", subtype="DIR_PATH", description="emotalker-dataset/1 folder")
    directory: StringProperty(name="Avatar Folder", subtype="DIR_PATH",
                              description="Where the avatar is written (an existing one is trained further)")
    stage: EnumProperty(name="Stages", default="ALL", items=[
        ("ALL", "All", "Stage 1, A2E, then Stage 2"), ("NEUTRAL", "Stage 1", "The Gaussian blendshapes"),
        ("A2E", "A2E", "Audio to expression"), ("EMOTION", "Stage 2", "The emotion offsets (needs Stage 1)")])
    neutral_steps: IntProperty(name="Stage 1 Steps", default=0, min=0, description="0: the stage's default")
    a2e_steps: IntProperty(name="A2E Steps", default=0, min=0, description="0: the stage's default")
    emotion_steps: IntProperty(name="Stage 2 Steps", default=0, min=0, description="0: the stage's default")
    gaussians: IntProperty(name="Gaussians", default=0, min=0, description="Stage 1's initial Gaussians (0: the default)")
    minutes: FloatProperty(name="Time Budget (min)", default=0.0, min=0.0,
                           description="Fit the steps to this many minutes (0: 30 on a CPU for all stages unless "
                                       "steps are given; none on CUDA)")
    resume: BoolProperty(name="Resume", default=True, description="Continue each stage from its checkpoint")
    import_result: BoolProperty(name="Import When Done", default=True)
    open_report: BoolProperty(name="Open the Report", default=True,
                              description="Open the avatar report (written after all stages) in the web browser")
    name: StringProperty(name="Name", default="Avatar", description="Name of the imported avatar")

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self, width=420)

    def make_job(self, context):
        dataset, out = (bpy.path.abspath(p) for p in (self.dataset, self.directory))
        if not dataset or not out:
            raise OSError("choose a dataset folder and an avatar folder")
        steps = {s: n for s, n in (("neutral", self.neutral_steps), ("a2e", self.a2e_steps),
                                   ("emotion", self.emotion_steps)) if n > 0}
        Path(out).mkdir(parents=True, exist_ok=True)
        return TrainJob(session.worker(context), dataset, out, self.stage.lower(), steps, self.resume,
                        session.device(context), self.gaussians, self.minutes)

    def cancelled_message(self) -> str:
        return "training cancelled; run it again with Resume to continue from the last step"

    def finished(self, context, result):
        for line in self._job.plan + self._job.summaries:
            self.report({"INFO"}, line)
        if result.get("report_error"):
            self.report({"WARNING"}, f"the avatar report failed: {result['report_error']}")
        if self.import_result:
            bpy.ops.emotalker.import_avatar(directory=result["avatar"], name=self.name)
        if result.get("report") and self.open_report and not bpy.app.background:
            bpy.ops.wm.url_open(url=Path(result["report"]).as_uri())


CLASSES = (EMOTALKER_OT_train_avatar,)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
