"""Make the built-in demo sample that `emotalker demo` bakes: a small avatar and ~5 s of speech.

    python tools/make_demo_avatar.py [--work build/demo-avatar] [--out emotalker/data]

What it runs, with fixed small settings so that the result is reproducible and
small enough to ship in the repository (<= 25 MB):

1. `emotalker make-sample` equivalent: the procedural head, 24 clips of 2.5 s at
   128x128 (seed 0), rendered with Blender Cycles (needs the `blender` extra and
   espeak-ng) into WORK/dataset (a re-run resumes);
2. Stage 1 (Gaussian blendshapes) on the train split: N_GAUSSIANS face
   Gaussians to start, MAX_GAUSSIANS at most, N_BLENDSHAPES Gaussian blendshapes,
   SH degree 1, 128 px, STEPS_NEUTRAL steps;
   the step counts are small because the demo must be made on a shared 2-core
   CPU: it is a demonstration of the pipeline, not a quality avatar;
3. A2E on the same dataset (log-mel features, STEPS_A2E steps);
4. Stage 2 (emotion offsets over Stage 1, `emotalker train emotion`'s
   defaults), STEPS_EMOTION steps;
5. copies the bundle (avatar.json, flame_model.npz, neutral.safetensors,
   a2e.safetensors, emotion.safetensors) to OUT/demo_avatar and speaks DEMO_TEXT
   with espeak-ng into OUT/demo_speech.wav (16 kHz, 16-bit).

Training runs `core.training`'s stages with `train_config()`; a re-run keeps
the stages already in WORK/avatar and resumes the others from their checkpoints.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLE = dict(clips=24, resolution=128, duration=2.5, seed=0)
STEPS_NEUTRAL = 400
STEPS_A2E = 300
STEPS_EMOTION = 600
N_GAUSSIANS = 4000
MAX_GAUSSIANS = 6000
N_BLENDSHAPES = 20
DEMO_TEXT = "Hello there! I can smile while I talk, and then I can sound a little sad about it."
DEMO_SECONDS = 5.0
MAX_BYTES = 25 * 1024 * 1024


def make_dataset(work: Path) -> Path:
    from emotalker.sample.generate import PRESETS, make_sample

    from dataclasses import replace

    return make_sample(work / "dataset", replace(PRESETS["default"], **SAMPLE), progress="bar")


def train_config():
    """The three stages' settings for the demo (the rest are the library's defaults)."""
    from emotalker.core.models.blendshapes import BlendshapeConfig
    from emotalker.core.training.a2e import TrainA2EConfig
    from emotalker.core.training.emotion import TrainEmotionConfig
    from emotalker.core.training.neutral import TrainNeutralConfig
    from emotalker.core.training.pipeline import TrainAllConfig

    res = SAMPLE["resolution"]
    stage1 = BlendshapeConfig(n_gaussians=N_GAUSSIANS, n_blendshapes=N_BLENDSHAPES, sh_degree=1)
    return TrainAllConfig(
        neutral=TrainNeutralConfig(steps=STEPS_NEUTRAL, resolution=res, model=stage1, max_gaussians=MAX_GAUSSIANS,
                                   checkpoint_every=100, delta_every=1),
        a2e=TrainA2EConfig(steps=STEPS_A2E),
        emotion=TrainEmotionConfig(steps=STEPS_EMOTION, resolution=res))


def speak(path: Path) -> float:
    """DEMO_TEXT with espeak-ng, at a rate that lasts about DEMO_SECONDS, into a 16 kHz wav; returns seconds."""
    import numpy as np
    import soundfile as sf

    from emotalker.core.audio.waveform import SAMPLE_RATE, resample
    from emotalker.core.base.fileio import atomic_path
    from emotalker.sample.phonemes import Espeak, Voice

    first = Espeak.synthesize(DEMO_TEXT, Voice("en-us", rate=165))
    rate = int(np.clip(165 * (len(first.samples) / first.sample_rate) / (DEMO_SECONDS - 0.3), 110, 260))
    speech = Espeak.synthesize(DEMO_TEXT, Voice("en-us", rate=rate))
    samples = resample(speech.samples, speech.sample_rate, SAMPLE_RATE)
    pad = np.zeros(int(0.15 * SAMPLE_RATE), np.float32)
    samples = np.concatenate([pad, samples, pad])
    with atomic_path(path) as tmp:
        sf.write(str(tmp), samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return len(samples) / SAMPLE_RATE


def _scrub_paths(path: Path, work: Path) -> None:
    """Replace this machine's working folder in a shipped file's provenance with "WORK"
    (training records the dataset's absolute path; the repository must not hold one)."""
    import json

    from emotalker.core.base.fileio import load_tensors, read_json, save_tensors, write_json

    prefix = str(work.resolve())
    scrub = lambda obj: json.loads(json.dumps(obj).replace(prefix, "WORK"))  # noqa: E731
    if path.suffix == ".json":
        write_json(path, scrub(read_json(path, "avatar manifest")))
    elif path.suffix == ".safetensors":
        tensors, meta = load_tensors(path)
        if prefix in json.dumps(meta):
            save_tensors(path, tensors, scrub(meta))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(ROOT / "build" / "demo-avatar"), help="working folder (dataset, checkpoints)")
    parser.add_argument("--out", default=str(ROOT / "emotalker" / "data"), help="where demo_avatar/ and demo_speech.wav go")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    dataset = make_dataset(work)
    print(f"dataset ready in {time.monotonic() - t0:.0f} s")
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.training.pipeline import STAGES

    avatar, config = work / "avatar", train_config()
    for stage, train in STAGES:  # train_all's stages in its order, skipping those already trained
        if (avatar / "avatar.json").is_file() and AvatarBundle.open(avatar).has_stage(stage):
            print(f"{stage}: already in {avatar}")
            continue
        metrics = train(dataset, avatar, getattr(config, stage), "cpu", "bar", True)
        print(f"{stage}: {metrics}  ({time.monotonic() - t0:.0f} s)")

    target = out / "demo_avatar"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("avatar.json", "flame_model.npz", "neutral.safetensors", "a2e.safetensors", "emotion.safetensors"):
        shutil.copyfile(avatar / name, target / name)
        _scrub_paths(target / name, work)
    seconds = speak(out / "demo_speech.wav")
    size = sum(p.stat().st_size for p in target.iterdir()) + (out / "demo_speech.wav").stat().st_size
    print(f"wrote {target} and {out / 'demo_speech.wav'} ({seconds:.2f} s of speech): {size / 1e6:.1f} MB in all, "
          f"{time.monotonic() - t0:.0f} s")
    if size > MAX_BYTES:
        print(f"error: the demo sample is {size / 1e6:.1f} MB, over the {MAX_BYTES / 1e6:.0f} MB budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
