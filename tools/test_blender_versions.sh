#!/usr/bin/env bash
# Runs the add-on tests under every supported Blender (as the bpy module), each in its own
# virtual environment under build/ (made once, reused). Prints one PASS/FAIL line per version
# and exits non-zero on any failure. Usage: tools/test_blender_versions.sh [VERSION...]
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(4.2.23 4.5.15 5.0.1)
TORCH=torch==2.13.0   # the local CPU build; installed first and pinned, or pip pulls CUDA wheels
TESTS=(tests/test_blender_addon.py tests/test_worker.py)

make_env() {  # $1 bpy version, $2 venv folder
    local venv=$2 pin="$2/pin.txt"
    [ "$(cat "$venv/ok" 2>/dev/null)" = "$1" ] && return 0  # made before, completely
    rm -rf "$venv"
    python3 -m venv "$venv" || return 1
    # bpy pins numpy 1.26.x: keep every step below numpy 2 and on the pinned torch.
    printf '%s\nnumpy<2\n' "$TORCH" > "$pin"
    "$venv/bin/pip" install -q -c "$pin" "$TORCH" &&
        "$venv/bin/pip" install -q -c "$pin" -e ".[test]" &&
        "$venv/bin/pip" install -q -c "$pin" "bpy==$1" &&
        echo -n "$1" > "$venv/ok"
}

failed=0
for version in "${VERSIONS[@]}"; do
    venv="build/bpy-$version"
    log="build/bpy-$version.log"
    mkdir -p build
    if ! make_env "$version" "$venv" > "$log" 2>&1; then
        echo "FAIL bpy $version: environment setup failed (see $log)"
        failed=1
        continue
    fi
    if PYTHONPATH="$ROOT" "$venv/bin/python" -m pytest -q -p no:xdist -p no:cacheprovider "${TESTS[@]}" \
            >> "$log" 2>&1; then
        echo "PASS bpy $version: $(tail -n 1 "$log")"
    else
        echo "FAIL bpy $version: $(tail -n 1 "$log") (see $log)"
        failed=1
    fi
done
exit $failed
