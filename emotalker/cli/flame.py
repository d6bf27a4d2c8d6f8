"""`emotalker convert-flame`: a FLAME release .pkl to our flame_model.npz."""

from __future__ import annotations


def add_parsers(sub) -> None:
    p = sub.add_parser("convert-flame", help="convert a FLAME 2020/2023 .pkl into flame_model.npz (no chumpy needed)")
    p.add_argument("input", help="FLAME model .pkl (e.g. generic_model.pkl or flame2023.pkl)")
    p.add_argument("output", help="the flame_model.npz to write")
    p.add_argument("--n-shape", type=int, default=None, help="identity components to keep (default: FLAME's 300)")
    p.add_argument("--n-expr", type=int, default=None, help="expression components to keep (default: FLAME's 100)")
    p.set_defaults(func=run_convert)


def run_convert(args) -> None:
    from emotalker.core.base.fileio import check_output_file
    from emotalker.core.rig.flame_pickle import load_flame_pickle

    check_output_file(args.output, ".npz", inputs=(args.input,))
    model = load_flame_pickle(args.input, n_shape=args.n_shape, n_expr=args.n_expr)
    model.save(args.output)
    print(f"wrote {args.output}: {model.n_verts} vertices, {len(model.faces)} faces, "
          f"{model.n_shape} identity + {model.n_expr} expression components, {model.n_joints} joints")
