"""`emotalker make-head` and `emotalker show-head`: the built-in procedural FLAME-format head."""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("make-head", help="generate the procedural head (no FLAME licence needed) as flame_model.npz")
    p.add_argument("output", help="the .npz to write")
    p.add_argument("--seed", type=int, default=0, help="identity, skin, eye and hair colours (default 0)")
    p.set_defaults(func=run_make_head)

    p = sub.add_parser("show-head", help="draw a contact sheet of a head: neutral, jaw open, smile, frown, brows up, eyes closed")
    p.add_argument("output", help="the .png to write")
    p.add_argument("--head", default=None, help="a flame_model.npz (default: the procedural head for --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the procedural head when --head is not given")
    p.add_argument("--size", type=int, default=300, help="pixels per panel (default 300)")
    p.set_defaults(func=run_show_head)


def run_make_head(args) -> None:
    import time

    from emotalker.core.head import make_head

    start = time.perf_counter()
    model = make_head(args.seed)
    model.save(args.output)
    print(f"wrote {args.output}: {model.n_verts} vertices, {len(model.faces)} faces, {model.n_shape} identity + "
          f"{model.n_expr} expression components, {model.n_joints} joints ({time.perf_counter() - start:.1f} s)")


def run_show_head(args) -> None:
    from PIL import Image

    from emotalker.core.base.errors import InputError
    from emotalker.core.base.fileio import atomic_path
    from emotalker.core.rig.flame import FlameModel
    from emotalker.core.rig.rig_sheet import rig_sheet

    if args.size < 64:
        raise InputError(args.output, f"--size {args.size} is too small for a readable panel (64 or more)")
    if args.head is not None:
        model = FlameModel.load(args.head)
    else:
        from emotalker.core.head import make_head

        model = make_head(args.seed)
    image = rig_sheet(model, panel=args.size)
    with atomic_path(args.output) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", optimize=True)
    print(f"wrote {args.output} ({image.shape[1]}x{image.shape[0]})")
