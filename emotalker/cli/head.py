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


def check_seed(seed: int) -> int:
    """--seed as numpy's generators take it (0 .. 2**32 - 1), or one InputError naming the option."""
    from emotalker.core.base.limits import check_range

    return check_range(seed, 0, 2**32 - 1, "--seed", "the seed")


def run_make_head(args) -> None:
    import time

    from emotalker.core.base.fileio import check_output_file
    from emotalker.core.head import make_head

    check_output_file(args.output, ".npz")
    start = time.perf_counter()
    model = make_head(check_seed(args.seed))
    model.save(args.output)
    print(f"wrote {args.output}: {model.n_verts} vertices, {len(model.faces)} faces, {model.n_shape} identity + "
          f"{model.n_expr} expression components, {model.n_joints} joints ({time.perf_counter() - start:.1f} s)")


def run_show_head(args) -> None:
    from PIL import Image

    from emotalker.core.base.errors import InputError
    from emotalker.core.base.fileio import atomic_path, check_output_file
    from emotalker.core.rig.flame import FlameModel
    from emotalker.core.rig.rig_sheet import rig_sheet

    check_output_file(args.output, ".png", inputs=(args.head,) if args.head else ())
    if not 64 <= args.size <= 4096:
        raise InputError(None, f"--size must be 64..4096 pixels a panel (readable, and a sheet that fits in "
                               f"memory), got {args.size}")
    if args.head is not None:
        model = FlameModel.load(args.head)
    else:
        from emotalker.core.head import make_head

        model = make_head(check_seed(args.seed))
    image = rig_sheet(model, panel=args.size)
    with atomic_path(args.output) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", optimize=True)
    print(f"wrote {args.output} ({image.shape[1]}x{image.shape[0]})")
