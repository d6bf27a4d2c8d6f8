"""`emotalker a2e AVATAR --audio A.wav --emotion happy --intensity 2 --out curves.npz`.

Runs the avatar's audio-to-expression model and writes per-frame curves, the
input of baking (`emotalker bake --flame-curves`) and of the Blender timeline,
in the FLAME-curves format a bake writes (emotalker/bake/engine.py FlameCurves,
format "emotalker-flame-curves/1"). curves.npz holds:

    format           []     str      "emotalker-flame-curves/1"
    expr             [T, E] float32  FLAME expression coefficients
    jaw              [T, 3] float32  jaw pose, axis-angle (radians)
    neck             [T, 3] float32  neck pose, axis-angle (radians)
    eyes             [T, 6] float32  eye poses (zeros: A2E does not move the eyes)
    eyelids          [T, 2] float32  eyelid closure (zeros: open)
    emotion_weights  [T, 8] float32  the emotion mix used, over `emotions`
    intensity        [T]    float32  the intensity used, 0..3
    emotions         [8]    str      EMOTIONS, the order of emotion_weights
    expr_names       [E]    str      the rig's component names (empty when unnamed)
    fps              []     float    frames per second
    frame_start      []     int      1: row t is timeline frame t + 1, at audio time t / fps
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
    from emotalker.bake.engine import FlameCurves
    from emotalker.core.audio.waveform import check_audio_length, load_audio
    from emotalker.core.base.fileio import check_output_file
    from emotalker.core.base.limits import check_fps
    from emotalker.core.base.device import resolve_device
    from emotalker.core.base.emotions import check_intensity, parse_mix
    from emotalker.core.models.a2e import infer_curves, load_a2e
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.rig.flame import FlameModel

    check_output_file(args.out, ".npz", inputs=(args.audio,))
    check_intensity(args.intensity, "--intensity")
    weights = parse_mix(args.emotion, "--emotion")
    device = resolve_device(args.device)
    bundle = AvatarBundle.open(args.avatar)
    model, meta = load_a2e(bundle, device)
    fps = check_fps(args.fps, "--fps") if args.fps is not None else check_fps(meta["fps"], bundle.stage_path("a2e"))
    check_audio_length(args.audio, fps)
    samples = load_audio(args.audio)
    curves = infer_curves(model, samples, weights, args.intensity, fps, device)
    expr_names = FlameModel.load(bundle.flame_path).expr_names if bundle.flame_path.exists() else []
    FlameCurves.from_a2e(curves, fps).save(args.out, expr_names, audio=str(args.audio))
    print(f"wrote {args.out}: {len(curves['expr'])} frames at {fps:g} fps")
