"""`emotalker a2e AVATAR --audio A.wav --emotion happy --intensity 2 --out curves.npz`.

Runs the avatar's audio-to-expression model and writes per-frame curves, the
input of baking and of the Blender timeline. curves.npz holds:

    expr             [T, E] float32  FLAME expression coefficients
    jaw              [T, 3] float32  jaw pose, axis-angle (radians)
    neck             [T, 3] float32  neck pose, axis-angle (radians)
    emotion_weights  [T, 8] float32  the emotion mix used, over `emotions`
    intensity        [T]    float32  the intensity used, 0..3
    emotions         [8]    str      EMOTIONS, the order of emotion_weights
    expr_names       [E]    str      the rig's component names (empty when unnamed)
    fps              []     float    frames per second; frame t is at time t / fps
    sample_rate      []     int      16000, the rate the audio was read at
    n_samples        []     int      audio length in samples at sample_rate
    audio            []     str      the audio path as given

T = round(audio duration * fps).
"""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("a2e", help="audio + emotion -> per-frame FLAME expression/jaw/neck curves (curves.npz)")
    p.add_argument("avatar", help="avatar bundle folder with a trained a2e stage")
    p.add_argument("--audio", required=True, help="dialogue audio (any format soundfile reads)")
    p.add_argument("--emotion", default="neutral", help="an emotion (neutral angry contempt disgusted fear happy sad surprised) or a mix like happy=0.7,sad=0.3")
    p.add_argument("--intensity", type=float, default=1.0, help="emotion intensity, 0 (neutral) .. 3 (MEAD level 3)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the curves (default: the avatar's training fps)")
    p.add_argument("--out", required=True, help="curves.npz to write")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=run)


def run(args) -> None:
    import numpy as np

    from emotalker.core.models.a2e import infer_curves, load_a2e, resolve_emotion
    from emotalker.core.audio.waveform import SAMPLE_RATE, load_audio
    from emotalker.core.models.bundle import EMOTIONS, AvatarBundle
    from emotalker.core.base.device import resolve_device
    from emotalker.core.base.errors import InputError
    from emotalker.core.base.fileio import atomic_path
    from emotalker.core.rig.flame import FlameModel

    if not 0.0 <= args.intensity <= 3.0:
        raise InputError(None, f"--intensity must lie in [0, 3], got {args.intensity}")
    weights = resolve_emotion(args.emotion)
    device = resolve_device(args.device)
    bundle = AvatarBundle.open(args.avatar)
    model, meta = load_a2e(bundle, device)
    fps = float(args.fps or meta["fps"])
    samples = load_audio(args.audio)
    curves = infer_curves(model, samples, weights, args.intensity, fps, device)
    expr_names = FlameModel.load(bundle.flame_path).expr_names if bundle.flame_path.exists() else []
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **curves, emotions=np.array(EMOTIONS), expr_names=np.array(expr_names, dtype=np.str_),
                     fps=np.float64(fps), sample_rate=np.int64(SAMPLE_RATE), n_samples=np.int64(len(samples)),
                     audio=np.str_(str(args.audio)))
    print(f"wrote {args.out}: {len(curves['expr'])} frames at {fps:g} fps")
