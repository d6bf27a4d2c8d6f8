"""Stage 2 training on a tiny emotional dataset: it learns what Stage 1 cannot, resumes exactly,
and the commands write a bundle that evaluates and bakes."""

from __future__ import annotations

import pytest
import torch

from emotion_fixture import make_emotion_dataset

from emotalker.core.models.bundle import AvatarBundle
from emotalker.core.datasets.dataset import Dataset
from emotalker.core.models.avatar import Avatar
from emotalker.core.models.emotion_deformer import EmotionDeformer
from emotalker.core.datasets.emotion_frames import EmotionFrames
from emotalker.core.evaluation.emotion import clip_groups, evaluate_emotion
from emotalker.core.training.emotion import (EmotionTrainer, TrainEmotionConfig, feature_config, new_deformer,
                                             with_stage1_defaults)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_emotion_dataset(tmp_path_factory.mktemp("emotion"))


def trainer_for(dataset_root, avatar, cfg: TrainEmotionConfig, clips=None) -> EmotionTrainer:
    ds = Dataset.open(dataset_root)
    bundle = AvatarBundle.open(avatar)
    cfg = with_stage1_defaults(cfg, bundle)
    stage1 = Avatar.open(bundle, use_emotion=False).stage1
    ids = clips or [c.id for c in ds.split("train")]
    frames = EmotionFrames(ds, ids, feature_config(bundle), cfg.resolution, cfg.background)
    return EmotionTrainer(stage1, new_deformer(stage1, frames, cfg), frames, cfg)


def test_training_learns_the_emotional_colour_stage1_cannot(data):
    dataset_root, avatar = data
    # The shipped learning rates: over 8 seeds, 50 steps gained 1.6 to 2.9 dB here (an earlier
    # 1e-2 gained -1.1 to 3.3 dB: too chaotic for a test).
    cfg = TrainEmotionConfig(steps=50, backend="cpu")
    trainer = trainer_for(dataset_root, avatar, cfg, clips=["happy_b", "sad_a"])
    before = evaluate_emotion(trainer.avatar, trainer.frames, backend="cpu")
    stage1 = evaluate_emotion(Avatar(trainer.stage1), trainer.frames, backend="cpu")
    assert before["psnr"] == pytest.approx(stage1["psnr"], abs=1e-9)  # starts exactly at Stage 1
    trainer.run()
    trainer.deformer.eval()
    after = evaluate_emotion(trainer.avatar, trainer.frames, backend="cpu")
    assert after["psnr"] > stage1["psnr"] + 1.0, (after, stage1)
    # Stage 1 itself did not move (frozen by default).
    assert all(not p.requires_grad for p in trainer.stage1.parameters())


def test_resume_continues_exactly(data, tmp_path):
    dataset_root, avatar = data
    cfg = TrainEmotionConfig(steps=4, lr=1e-2, backend="cpu")
    straight = trainer_for(dataset_root, avatar, cfg, clips=["happy_b"])
    straight.run()
    first = trainer_for(dataset_root, avatar, cfg, clips=["happy_b"])
    while first.step < 2:
        first.train_step()
    ckpt = tmp_path / "emotion.ckpt.safetensors"
    first.save_checkpoint(ckpt)
    resumed = trainer_for(dataset_root, avatar, cfg, clips=["happy_b"])
    resumed.load_checkpoint(ckpt)
    assert resumed.step == 2
    resumed.run()
    for (name, a), b in zip(straight.deformer.state_dict().items(), resumed.deformer.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_train_emotion_command_writes_a_bundle_that_evaluates(data, tmp_path):
    import shutil

    from emotalker.cli.main import main

    dataset_root, avatar = data
    mine = tmp_path / "avatar"
    shutil.copytree(avatar, mine)
    assert main(["train", "emotion", str(dataset_root), "--avatar", str(mine), "--steps", "3", "--no-null-token",
                 "--progress", "none", "--eval-stride", "4"]) in (0, None)
    bundle = AvatarBundle.open(mine)
    assert bundle.has_stage("emotion")
    info = bundle.manifest()["stages"]["emotion"]
    assert info["steps"] == 3 and "stage2" in info["metrics"] and info["config"]["use_null"] is False
    model, meta = EmotionDeformer.load(bundle.stage_path("emotion"))
    assert model.cfg.use_null is False and meta["encoder"] == "table"
    groups = clip_groups(Dataset.open(dataset_root))
    assert groups["intensity3"] == ["happy_t"] and groups["heldout_intensity"] == ["happy_h"]
    assert not (mine / "emotion.ckpt.safetensors").exists() and not bundle.checkpoint_path("emotion").exists()

    # `eval` with Stage 2, Stage 1 alone, and driven by A2E (an untrained one will do here).
    from emotalker.core.models.a2e import A2EConfig, A2EModel
    from emotalker.core.base.fileio import read_json

    A2EModel(A2EConfig(n_expr=8, d_model=16, n_heads=2, n_layers=1, ffn=16)).save(bundle.stage_path("a2e"))
    bundle.update_manifest("a2e", file="a2e.safetensors")
    results = {}
    for name, extra in {"full": [], "stage1": ["--no-emotion"], "a2e": ["--driver", "a2e"]}.items():
        out = tmp_path / f"{name}.json"
        assert main(["eval", str(mine), str(dataset_root), "--max-frames", "2", "--json", str(out), *extra]) in (0, None)
        results[name] = read_json(out)
    assert results["full"]["stage2"] and not results["stage1"]["stage2"] and results["a2e"]["driver"] == "a2e"
    assert all(r["frames"] == 2 for r in results.values())
    assert main(["render", str(mine), "--frames", f"{dataset_root}:happy_t", "--out", str(tmp_path / "png"),
                 "--range", "0:2", "--driver", "a2e"]) in (0, None)
    assert len(list((tmp_path / "png").glob("*.png"))) == 2


def test_a2e_driven_frames_replace_the_tracked_expression(data):
    from emotalker.core.models.a2e import A2EConfig, A2EModel
    from emotalker.core.datasets.emotion_frames import a2e_params

    dataset_root, avatar = data
    ds = Dataset.open(dataset_root)
    torch.manual_seed(0)
    a2e = A2EModel(A2EConfig(n_expr=8, d_model=16, n_heads=2, n_layers=1, ffn=16)).eval()
    p = a2e_params(a2e, ds, "happy_t")
    T = ds.n_frames("happy_t")
    assert p.expr.shape == (T, 8) and p.jaw.shape == (T, 3)
    bundle = AvatarBundle.open(avatar)
    frames = EmotionFrames(ds, ["happy_t"], feature_config(bundle), params_override={"happy_t": p})
    frame, conditions = frames.get(3)
    assert torch.allclose(frame.params.expr[0], p.expr[3]) and conditions.intensity.tolist() == [3.0]
    m = evaluate_emotion(Avatar.open(bundle, use_emotion=False), frames, indices=[0, 3], backend="cpu")
    assert m["frames"] == 2 and m["psnr"] > 5


def test_train_all_runs_the_three_stages_in_turn(data, tmp_path):
    from emotalker.cli.main import main

    dataset_root, _ = data
    out = tmp_path / "all"
    assert main(["train", "all", str(dataset_root), "--out", str(out), "--neutral-steps", "2", "--gaussians", "100",
                 "--a2e-steps", "2", "--emotion-steps", "2", "--eval-stride", "8", "--progress", "none"]) in (0, None)
    bundle = AvatarBundle.open(out)
    assert all(bundle.has_stage(s) for s in ("neutral", "a2e", "emotion"))
    # The plan printed before the first step is kept beside the stages (steps given: no budget).
    plan = bundle.manifest()["plan"]
    assert plan["minutes"] is None and [(s["stage"], s["steps"]) for s in plan["stages"]] == [
        ("neutral", 2), ("a2e", 2), ("emotion", 2)]
    avatar = Avatar.open(out)
    model = avatar.stage2
    assert model.cfg.n_gaussians == avatar.stage1.n_gaussians
    # Stage 2 reads the same audio features as the bundle's A2E.
    assert model.cfg.features == feature_config(bundle)


def test_the_worker_trains_every_stage_and_a_cancelled_run_resumes_from_the_step_it_stopped_at(data, tmp_path):
    """The Blender add-on's path: the worker's `train`, cancelled mid Stage 1, then sent again."""
    import sys

    from blender_addon.worker_client import WorkerClient, WorkerError

    dataset_root, _ = data
    out = tmp_path / "trained"
    # checkpoint_every beyond the run: only the cancel can have written the checkpoint the resume starts from.
    params = {"dataset": str(dataset_root), "avatar": str(out), "device": "cpu",
              "config": {"neutral": {"steps": 40, "checkpoint_every": 1000, "model": {"n_gaussians": 100}},
                         "a2e": {"steps": 2}, "emotion": {"steps": 2, "eval_stride": 8}}}
    client = WorkerClient(sys.executable)
    seen, plans = [], []

    def cancel_at_the_third_step(event: dict) -> None:
        if event["stage"] == "plan":  # before the first step
            plans.append(event)
            return
        seen.append(event["step"])
        if len(seen) == 3:
            client.cancel(event["id"])

    try:
        with pytest.raises(WorkerError) as cancelled:
            client.call("train", params, timeout=300, on_progress=cancel_at_the_third_step,
                        read=[dataset_root], write=[out])
        assert cancelled.value.kind == "cancelled" and seen[:3] == [1, 2, 3]
        assert [(st["stage"], st["steps"]) for st in plans[0]["stages"]] == [("neutral", 40), ("a2e", 2), ("emotion", 2)]
        assert plans[0]["lines"][0].startswith("plan (cpu, no time budget")  # steps were given
        assert AvatarBundle.open(out).checkpoints("neutral")

        events = []
        result = client.call("train", params, timeout=600, on_progress=events.append, read=[dataset_root], write=[out])
    finally:
        client.close()
    neutral_steps = [e["step"] for e in events if e["stage"] == "train neutral" and not e.get("finished")]
    assert neutral_steps[0] == seen[-1] + 2 and neutral_steps[-1] == 40  # the step cancelled was kept
    finished = [e for e in events if e.get("finished")]
    assert [e["stage"] for e in finished] == ["train neutral", "train a2e", "train emotion"]
    assert finished[1]["held_out_psnr"] is None and finished[2]["held_out_psnr"] > 5
    assert set(result["stages"]) == {"neutral", "a2e", "emotion"} and result["avatar"] == str(out)
    assert result["stages"]["neutral"]["summary"].startswith("Stage 1: ")
    assert all(AvatarBundle.open(out).has_stage(s) for s in ("neutral", "a2e", "emotion"))
    assert result["report"] == str(out / "report.html") and (out / "report.html").stat().st_size > 10_000


def test_stage_2_without_stage_1_is_one_line_before_any_probe_or_file(data, tmp_path, capsys):
    from emotalker.cli.main import main

    dataset_root, _ = data
    missing = tmp_path / "no_avatar"
    assert main(["train", "emotion", str(dataset_root), "--avatar", str(missing), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "avatar folder not found" in err[0] and not missing.exists()
