"""Speed of the CPU renderer on a head-like scene, against the torch reference in the same run.

    python benchmarks/render.py --json out.json [--baseline REV]

Figures (medians over repeats; each is also reported per round, since other
processes may share the cores):
  cpu_fwd_ms_512_50k           forward, 512x512, 50,000 Gaussians          (goal <= 30 ms)
  cpu_fwdbwd_ms_256_20k        forward + backward, 256x256, 20,000          (goal <= 30 ms)
  cpu_fwd_ms_720p_demo         forward, 1280x720, the shipped demo avatar's neutral face from
                               front_camera (the viewport's case)
  speedup_vs_reference_128_5k  reference / cpu, forward + backward, 128x128, 5,000 (goal >= 20)

--baseline REV (e.g. HEAD~1 or main) also times the renderer of git revision REV, extracted
(git archive) into a temporary folder: the three cases above run in fresh processes, the
working tree's code and REV's taking turns round by round on the same saved scenes, and
`baseline_*` and `speedup_vs_baseline_*` report REV's medians and REV / this tree.

The scene: Gaussians on the front of an ellipsoid the size of a head (FLAME space,
metres, +Y up, +Z out of the face), flattened along the surface normal with
tangent scales about the spacing between neighbours, SH degree 3, seen by a
camera 0.5 m in front whose focal length makes the head fill ~80% of the image.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a --worker run times the code under --code (a baseline's folder) instead of this tree's
sys.path.insert(0, sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv else str(ROOT))

import emotalker  # noqa: E402,F401  (before torch: it sets OpenMP's wait policy, docs/renderer.md)
import torch  # noqa: E402
from emotalker.core.render import rasterize  # noqa: E402

HEAD_AXES = (0.075, 0.10, 0.09)   # ellipsoid semi-axes, metres (x, y, z)
CAMERA_DISTANCE = 0.5


def rotmat_to_quat(r: torch.Tensor) -> torch.Tensor:
    """wxyz quaternions [N,4] of rotation matrices [N,3,3] (branch-free via the largest pivot)."""
    m = r
    t = torch.stack([1 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                     1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], 1)
    k = t.argmax(1)
    cand = torch.stack([
        torch.stack([t[:, 0], m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], 1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], t[:, 1], m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], 1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], t[:, 2], m[:, 1, 2] + m[:, 2, 1]], 1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], t[:, 3]], 1),
    ], 1)
    q = cand[torch.arange(len(k)), k]
    return q / q.norm(dim=1, keepdim=True)


def head_scene(n: int, size: int, seed: int = 0):
    """Head-like Gaussians and one camera. Returns a dict of rasterize() arguments (SH degree 3)."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.tensor(HEAD_AXES)
    # front of the ellipsoid (z >= -0.25 of its depth), uniform over direction
    dirs = torch.randn(n * 3, 3, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    dirs = dirs[dirs[:, 2] > -0.25][:n]
    normals = dirs / ax**2
    normals = normals / normals.norm(dim=1, keepdim=True)
    means = dirs * ax + normals * 0.001 * torch.randn(n, 1, generator=g)
    area = 2.5 * math.pi * (ax[0] * ax[1] * ax[2]) ** (2 / 3)          # ~ the front's area
    spacing = math.sqrt(float(area) / n)
    tangent = torch.exp(torch.randn(n, 2, generator=g) * 0.35) * spacing * 0.7
    normal_scale = tangent.min(1, keepdim=True).values * 0.15
    scales = torch.cat([tangent, normal_scale], 1)
    # frame: columns t1, t2, n with a random twist about the normal
    helper = torch.where(normals[:, 1:2].abs() < 0.9, torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    t1 = torch.nn.functional.normalize(torch.cross(helper, normals, dim=1), dim=1)
    t2 = torch.cross(normals, t1, dim=1)
    ang = torch.rand(n, 1, generator=g) * 2 * math.pi
    t1, t2 = t1 * ang.cos() + t2 * ang.sin(), t2 * ang.cos() - t1 * ang.sin()
    quats = rotmat_to_quat(torch.stack([t1, t2, normals], 2))
    opacities = torch.sigmoid(torch.randn(n, generator=g) * 1.5 + 1.5)
    sh = torch.randn(n, 16, 3, generator=g) * 0.05
    sh[:, 0] = (torch.rand(n, 3, generator=g) * 0.6 + 0.2 - 0.5) / 0.28209479177387814
    # OpenCV camera on +Z looking at the face: x right, y down, z forward
    viewmat = torch.tensor([[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, -1.0, CAMERA_DISTANCE], [0, 0, 0, 1.0]])
    focal = 0.8 * size * (CAMERA_DISTANCE - ax[2].item()) / (2 * ax[1].item())
    K = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=sh,
                viewmats=viewmat[None], Ks=K[None], width=size, height=size, sh_degree=3)


def demo_scene(width: int = 1280, height: int = 720) -> dict:
    """The shipped demo avatar's neutral face (Stage 1 only) seen by front_camera at width x height."""
    from emotalker.bake.demo import DEMO_AVATAR
    from emotalker.core.models.avatar import Avatar
    from emotalker.core.render.camera import front_camera
    from emotalker.core.rig.flame import FlameParams

    avatar = Avatar.open(DEMO_AVATAR, use_emotion=False)
    stage1 = avatar.stage1
    with torch.no_grad():
        frame = stage1.evaluate(FlameParams(expr=torch.zeros(1, stage1.flame_model.n_expr)), avatar.sh_degree)
    g = frame.unbind()[0]
    quats, scales, opacities, sh = g.activated()
    camera = front_camera(stage1.flame_model.v_template, width, height)
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return dict(means=f32(g.means), quats=f32(quats), scales=f32(scales), opacities=f32(opacities), colors=f32(sh),
                viewmats=f32(camera.viewmat)[None], Ks=f32(camera.K)[None], width=width, height=height,
                sh_degree=int(g.sh_degree))


# the cases a --baseline comparison times: (key, scene name, with backward)
CASES = (("cpu_fwd_ms_512_50k", "head_512_50k", False), ("cpu_fwdbwd_ms_256_20k", "head_256_20k", True),
         ("cpu_fwd_ms_720p_demo", "demo_720p", False))


def save_scenes(scenes: dict, folder: Path) -> None:
    """Each scene as folder/NAME.npz (plain arrays, no pickle), for --worker runs."""
    import numpy as np

    for name, scene in scenes.items():
        np.savez(folder / f"{name}.npz", **{k: (v.numpy() if torch.is_tensor(v) else np.asarray(v))
                                             for k, v in scene.items()})


def load_scene(path: Path) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: (torch.from_numpy(z[k]) if z[k].ndim else int(z[k])) for k in z.files}


def worker(scenes: Path, repeats: int) -> None:
    """--worker: time CASES with the code on sys.path (this tree's or --code's); prints one JSON line."""
    out = {}
    for key, name, grad in CASES:
        scene = load_scene(scenes / f"{name}.npz")
        _render(scene, "cpu", grad)                     # compile or load numba's cache
        _render(scene, "cpu", grad)
        wall, cpu = time_ms(lambda: _render(scene, "cpu", grad), repeats)
        out[key] = statistics.median(wall)
        out[key + "_cpu"] = statistics.median(cpu)
    print(json.dumps(out))


def extract_revision(rev: str) -> tuple[Path, str]:
    """git archive REV into a temporary folder (kept, keyed by commit, so that numba's cache beside
    its sources is reused by the next run) -> (folder, commit)."""
    import subprocess
    import tarfile
    import tempfile

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", rev + "^{commit}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    folder = Path(tempfile.gettempdir()) / f"emotalker-render-baseline-{commit[:12]}"
    if not (folder / ".complete").exists():
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        (tmp / ".complete").write_text(commit + "\n")
        try:
            tmp.rename(folder)
        except OSError:       # another run got there first
            pass
    return folder, commit


def compare_with_baseline(rev: str, scenes: dict, rounds: int, repeats: int, report: dict) -> None:
    """Alternate fresh-process runs of this tree's renderer and REV's on the same scenes."""
    import subprocess
    import tempfile

    folder, commit = extract_revision(rev)
    report["baseline_rev"] = f"{rev} ({commit[:12]})"
    with tempfile.TemporaryDirectory(prefix="emotalker-scenes-") as tmp:
        save_scenes(scenes, Path(tmp))
        runs: dict = {"current": [], "baseline": []}
        for r in range(rounds):
            order = ("current", "baseline") if r % 2 == 0 else ("baseline", "current")
            for which in order:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tmp, "--repeats", str(repeats)]
                if which == "baseline":
                    cmd += ["--code", str(folder)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
                if proc.returncode != 0:
                    raise SystemExit(f"{which} run failed:\n{proc.stderr[-3000:]}")
                runs[which].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for key, _, _ in CASES:
        cur, base = (statistics.median(run[key] for run in runs[w]) for w in ("current", "baseline"))
        cur_cpu, base_cpu = (statistics.median(run[key + "_cpu"] for run in runs[w]) for w in ("current", "baseline"))
        report.update({f"baseline_{key}": base, f"tree_{key}": cur, f"speedup_vs_baseline_{key}": round(base / cur, 2),
                       f"baseline_{key}_cpu_time_ms": base_cpu, f"tree_{key}_cpu_time_ms": cur_cpu})
        print(f"{key:32s} this tree {cur:8.1f} ms   {rev} {base:8.1f} ms   speed-up {base / cur:5.2f}x "
              f"(process CPU time {cur_cpu:.1f} vs {base_cpu:.1f} ms; fresh processes, {rounds} rounds, "
              f"taking turns)", flush=True)


def _render(scene, backend, grad: bool):
    ins = {k: (v.detach().requires_grad_(grad) if k in ("means", "quats", "scales", "opacities", "colors") else v)
           for k, v in scene.items()}
    if not grad:
        with torch.no_grad():
            return rasterize(**ins, backend=backend)
    out = rasterize(**ins, backend=backend)
    (out.rgb.sum() + 0.1 * out.alpha.sum() + 0.01 * out.depth.sum()).backward()
    return out


def time_ms(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU time (all threads) of each call, in ms."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def measure(name, fn, rounds: int, repeats: int, report: dict) -> float:
    """Median over rounds of the per-round median wall time; CPU time is reported beside it
    because on a shared machine it depends less on what else runs."""
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time_ms(fn, repeats)
        walls.append(statistics.median(wall))
        cpus.append(statistics.median(cpu))
    report[name + "_round_medians"] = [round(m, 2) for m in walls]
    report[name + "_cpu_time_ms"] = round(statistics.median(cpus), 2)
    value = statistics.median(walls)
    print(f"{name:32s} {value:9.1f} ms   (round medians: {', '.join(f'{m:.1f}' for m in walls)}; "
          f"process CPU time {statistics.median(cpus):.1f} ms)", flush=True)
    return value


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the figure is the median of round medians")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls a round")
    ap.add_argument("--reference-repeats", type=int, default=3, help="timed reference calls (they take seconds)")
    ap.add_argument("--baseline", metavar="REV", help="also time git revision REV's renderer (see above)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)   # internal: time CASES on saved scenes
    ap.add_argument("--code", type=Path, help=argparse.SUPPRESS)     # internal: the code a worker times
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.repeats)
        return {}

    import numba
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report: dict = {"load_average_1min_at_start": load, "torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
                    "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                    "note": "wall-clock medians on a shared machine; other processes may use the same cores"}
    big, mid, small = head_scene(50_000, 512), head_scene(20_000, 256), head_scene(5_000, 128)
    demo = demo_scene()

    t0 = time.perf_counter()
    _render(small, "cpu", grad=True)            # compiles (or loads numba's cache) every kernel
    report["first_call_s"] = round(time.perf_counter() - t0, 2)
    print(f"first call (numba compile or cache load): {report['first_call_s']} s", flush=True)
    for scene in (big, mid, demo):
        _render(scene, "cpu", grad=True)
    out = _render(big, "cpu", grad=False)
    report["coverage_512_50k"] = round(float(out.alpha.mean()), 3)
    report["visible_512_50k"] = int((out.radii > 0).sum())

    report["cpu_fwd_ms_512_50k"] = measure("cpu_fwd_ms_512_50k", lambda: _render(big, "cpu", False),
                                           args.rounds, args.repeats, report)
    report["cpu_fwdbwd_ms_256_20k"] = measure("cpu_fwdbwd_ms_256_20k", lambda: _render(mid, "cpu", True),
                                              args.rounds, args.repeats, report)
    report["cpu_fwd_ms_720p_demo"] = measure("cpu_fwd_ms_720p_demo", lambda: _render(demo, "cpu", False),
                                             args.rounds, args.repeats, report)
    report["n_gaussians_720p_demo"] = int(demo["means"].shape[0])
    cpu_small = measure("cpu_fwdbwd_ms_128_5k", lambda: _render(small, "cpu", True), args.rounds, args.repeats,
                        report)
    ref_small = measure("reference_fwdbwd_ms_128_5k", lambda: _render(small, "reference", True), 1,
                        args.reference_repeats, report)
    report["cpu_fwdbwd_ms_128_5k"] = cpu_small
    report["reference_fwdbwd_ms_128_5k"] = ref_small
    report["speedup_vs_reference_128_5k"] = round(ref_small / cpu_small, 1)
    print(f"speedup_vs_reference_128_5k      {report['speedup_vs_reference_128_5k']:9.1f} x")
    if args.baseline:
        compare_with_baseline(args.baseline, {"head_512_50k": big, "head_256_20k": mid, "demo_720p": demo},
                              args.rounds, args.repeats, report)
    goals = {"cpu_fwd_ms_512_50k": ("<=", 30), "cpu_fwdbwd_ms_256_20k": ("<=", 30),
             "speedup_vs_reference_128_5k": (">=", 20)}
    for key, (op, goal) in goals.items():
        ok = report[key] <= goal if op == "<=" else report[key] >= goal
        print(f"  {key}: {report[key]:.1f} (goal {op} {goal}) {'met' if ok else 'NOT met'}")
    if hasattr(os, "getloadavg"):
        report["load_average_1min_at_end"] = os.getloadavg()[0]
        print(f"load average (1 min): {load:.1f} at start, {report['load_average_1min_at_end']:.1f} at end "
              f"on {os.cpu_count()} cores")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in report.items()},
                                        indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
