#!/usr/bin/env bash
# The GPU check: everything this project claims about CUDA, measured in one go on one GPU, in under
# 8 minutes, with every figure in one JSON file. How to prepare and run it: docs/gpu.md.
#
#   benchmarks/gpu_check.sh --wheels DIR [--out gpu_check.json] [--venv DIR]
#   benchmarks/gpu_check.sh --dry-run [--out FILE] [--python PY]   # no GPU: every step on the CPU, small, checked
#                                      (PY: a Python with this project installed; default .venv/bin/python)
#
# Steps (each timed; a failed step is recorded and the next ones still run):
#   1. install   a venv from the wheels brought along only (--no-index: the GPU machine may be offline):
#                the CUDA build of torch, this package with the cuda and test extras, gsplat pinned
#   2. gsplat    gsplat's CUDA kernels built on first use (MAX_JOBS = every core), timed
#   3. tests     pytest -m cuda: gsplat against the CPU renderer, forward and gradients
#   4. render    benchmarks/render.py's head scene on CUDA, 512x512, 50k Gaussians (gsplat)
#   5. train     Stage 1 for 2 minutes on CUDA, then the same first steps on the CPU (60 s at most)
#   6. bake      the demo avatar, 125 frames, PLY + PNG at 512, on CUDA
# The budget: install ~60 s, gsplat build ~150 s on 16 cores, tests ~30 s, render ~20 s, train 120 + 60 s,
# bake ~20 s: ~7.7 min. Each step has its own timeout so that one stuck step cannot take the rest.
set -uo pipefail

GSPLAT_VERSION=1.5.3          # the gsplat the cuda tests were written against; its kernels build on first use
TORCH_CUDA="torch==2.13.0"    # the CUDA build of the torch install.py pins (its +cuXXX wheel among --wheels)
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/gpu_check.json"
VENV="$ROOT/.venv-gpu"
WHEELS=""
DRY=0
PY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --wheels) WHEELS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --venv) VENV="$2"; shift ;;
        --python) PY="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
OUT="$(realpath -m "$OUT")"
LOG="$(mktemp -d "${TMPDIR:-/tmp}/emotalker-gpu-check.XXXXXX")"
STEPS="$LOG/steps.jsonl"
: > "$STEPS"
START=$(date +%s.%N)
CORES=$(nproc)

# step NAME TIMEOUT_S COMMAND...: run it, keep its output in $LOG/NAME.log, note seconds and status.
step() {
    local name="$1" limit="$2"; shift 2
    local t0 t1 rc
    echo "[gpu-check] $name: $*" >&2
    t0=$(date +%s.%N)
    timeout "$limit" "$@" > "$LOG/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    "$PY" - "$name" "$rc" "$t0" "$t1" "$LOG/$name.log" >> "$STEPS" <<'EOF'
import json, sys
name, rc, t0, t1, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
lines = open(log, errors="replace").read().splitlines()
figures = {}
for line in reversed(lines):  # a step's figures: the last line of its output that is a JSON object
    if line.startswith("{"):
        try:
            figures = json.loads(line)
            break
        except ValueError:
            pass
print(json.dumps({"step": name, "rc": rc, "seconds": round(t1 - t0, 2), "timed_out": rc == 124,
                  "figures": figures, "tail": lines[-5:] if rc else []}))
EOF
    [ $rc -eq 0 ] || echo "[gpu-check] $name FAILED (exit $rc): see $LOG/$name.log" >&2
    return 0
}

if [ $DRY -eq 1 ]; then
    # No GPU here: the same steps on the CPU with small sizes, in the project's own venv.
    [ -n "$PY" ] || PY="$ROOT/.venv/bin/python"
    [ -x "$PY" ] || { echo "gpu_check.sh: no Python with this project at $PY (give --python)" >&2; exit 2; }
    DEVICE=cpu
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    step install 60 "$PY" -c "import torch, emotalker; print('torch', torch.__version__)"
    step gsplat 60 "$PY" -c "import importlib.util as u; print('gsplat installed:', bool(u.find_spec('gsplat')), '(built on a GPU only)')"
    step tests 300 "$PY" -m pytest -p no:xdist -q -m cuda "$ROOT/tests/test_render_cuda.py"
    step render 120 "$PY" "$ROOT/benchmarks/gpu_check.py" render --device cpu --size 64 --gaussians 2000 --repeats 2
    TINY=(--resolution 32 --frames 2 --gaussians 500)
    step train_cuda 120 "$PY" "$ROOT/benchmarks/gpu_check.py" train --device cpu --seconds 30 --steps 5 "${TINY[@]}"
    step train_cpu 120 "$PY" "$ROOT/benchmarks/gpu_check.py" train --device cpu --seconds 30 --steps 5 "${TINY[@]}"
    step bake 180 "$PY" "$ROOT/benchmarks/gpu_check.py" bake --device cpu --frames 3 --resolution 32
else
    [ -n "$WHEELS" ] && [ -d "$WHEELS" ] || { echo "gpu_check.sh: --wheels DIR (the wheels brought along) is required" >&2; exit 2; }
    command -v nvidia-smi > /dev/null || { echo "gpu_check.sh: no nvidia-smi: is there a GPU?" >&2; exit 2; }
    PY="$VENV/bin/python"
    DEVICE=cuda
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" MAX_JOBS="$CORES"
    # gsplat's JIT build: its cache in the venv, so a re-run reuses it and a fresh venv measures the build.
    export TORCH_EXTENSIONS_DIR="$VENV/torch_extensions"
    python3 -m venv "$VENV"
    step install 240 "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$TORCH_CUDA" "gsplat==$GSPLAT_VERSION" \
        ninja -e "$ROOT[cuda,test]"   # setuptools among the wheels too: the editable build needs it
    # Only this GPU's architecture is compiled (TORCH_CUDA_ARCH_LIST), with every core (MAX_JOBS).
    step gsplat 300 "$PY" -c "
import json, os, time, torch
major, minor = torch.cuda.get_device_capability(0)
os.environ['TORCH_CUDA_ARCH_LIST'] = f'{major}.{minor}'
t = time.perf_counter()
import gsplat
from gsplat.cuda._backend import _C
assert _C is not None, 'gsplat kernels did not build (is nvcc, the CUDA toolkit, on PATH?)'
print(json.dumps({'gsplat_version': gsplat.__version__, 'gsplat_build_s': round(time.perf_counter() - t, 1),
                  'gsplat_build_jobs': $CORES, 'cuda_arch': f'{major}.{minor}', 'torch': torch.__version__,
                  'torch_cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name(0)}))"
    step tests 180 "$PY" -m pytest -p no:xdist -q -m cuda "$ROOT/tests"
    step render 120 "$PY" "$ROOT/benchmarks/gpu_check.py" render --device cuda
    step train_cuda 150 "$PY" "$ROOT/benchmarks/gpu_check.py" train --device cuda --seconds 120
    CUDA_STEPS=$("$PY" -c "import json,sys; print(next(json.loads(l)['figures'].get('steps', 0) for l in open(sys.argv[1]) if json.loads(l)['step'] == 'train_cuda'))" "$STEPS")
    step train_cpu 90 "$PY" "$ROOT/benchmarks/gpu_check.py" train --device cpu --steps "${CUDA_STEPS:-0}" --seconds 60
    step bake 120 "$PY" "$ROOT/benchmarks/gpu_check.py" bake --device cuda
fi

# One JSON file: every step's status and figures, the machine, the total; then (dry run) the checks.
"$PY" - "$STEPS" "$OUT" "$START" "$DRY" "$DEVICE" <<'EOF'
import json, os, platform, subprocess, sys, time
steps_file, out, start, dry, device = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
steps = [json.loads(line) for line in open(steps_file)]
gpu = None
if not dry:
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
by_name = {s["step"]: s for s in steps}
cuda, cpu = by_name.get("train_cuda", {}).get("figures", {}), by_name.get("train_cpu", {}).get("figures", {})
common = sorted(set(map(int, cuda.get("seconds_at_step", {}))) & set(map(int, cpu.get("seconds_at_step", {}))))
report = {"format": "emotalker-gpu-check/1", "dry_run": dry, "device": device, "gpu": gpu,
          "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
          "python": platform.python_version(), "total_seconds": round(time.time() - start, 1),
          "steps": steps}
if common:  # CUDA against the CPU over the same steps: the last step both reached
    k = common[-1]
    report["train_same_steps"] = {"steps": k, "cuda_s": cuda["seconds_at_step"][str(k)],
                                  "cpu_s": cpu["seconds_at_step"][str(k)]}
    report["train_same_steps"]["speedup"] = round(cpu["seconds_at_step"][str(k)] / max(cuda["seconds_at_step"][str(k)], 1e-9), 2)
with open(out, "w") as f:
    json.dump(report, f, indent=2)
print(f"[gpu-check] {len(steps)} steps in {report['total_seconds']} s -> {out}", file=sys.stderr)
failed = [s["step"] for s in steps if s["rc"] != 0]
if dry:
    # The dry run checks the script itself: every step ran and left its figures, and the JSON holds them.
    expected = {"install", "gsplat", "tests", "render", "train_cuda", "train_cpu", "bake"}
    problems = [f"step {name} missing" for name in expected - set(by_name)]
    problems += [f"step {s['step']} failed (exit {s['rc']}): {s['tail']}" for s in steps if s["rc"] != 0]
    for name, key in (("render", "render_fwd_ms_64_2k"), ("train_cuda", "steps"), ("train_cpu", "steps"),
                      ("bake", "bake_fps")):
        if key not in by_name.get(name, {}).get("figures", {}):
            problems.append(f"step {name} left no {key}")
    if "train_same_steps" not in report:
        problems.append("no steps common to the two training runs")
    for p in problems:
        print(f"[gpu-check] dry run: {p}", file=sys.stderr)
    print("[gpu-check] dry run: " + ("FAILED" if problems else "every step ran and reported"), file=sys.stderr)
    sys.exit(1 if problems else 0)
sys.exit(1 if failed else 0)
EOF
