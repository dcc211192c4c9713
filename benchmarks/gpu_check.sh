#!/usr/bin/env bash
# The one prepared GPU check of the decoder at full size (issue 16): see benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh --prepare   # on a machine with package access: the wheel folder
#   bash benchmarks/gpu_check.sh             # on the GPU machine: prints one JSON line (< 8 min on one H100)
#   bash benchmarks/gpu_check.sh --tiny      # the same code at tiny sizes (a CPU is enough)
#
# The GPU machine has Python with CUDA torch, numpy, safetensors, huggingface_hub, Pillow and the
# rest of diffusers' needs, but not diffusers (nor open_clip, nibabel, pyzmq). --prepare downloads
# the pure-Python diffusers wheel (no dependencies: they are there) into
# benchmarks/gpu_check_wheels/ (gitignored, about 5 MB). The check installs nothing: it unpacks
# that wheel into a temporary folder put on PYTHONPATH for its own process, removed at exit.
# Other arguments go to gpu_check.py (--repeats N, --budget-s S, --no-compile).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
wheels="$here/gpu_check_wheels"
python="${PYTHON:-python3}"
# The version rtrecon's decoders are tested with; it needs huggingface_hub >= 1.32 (the GPU machine has 1.33).
diffusers_version="${DIFFUSERS_VERSION:-0.42.1}"

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf "$wheels" && mkdir -p "$wheels"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d "$wheels" "diffusers==$diffusers_version"
    size_kb=$(du -sk "$wheels" | cut -f1)
    if (( size_kb > 60 * 1024 )); then
        echo "gpu_check --prepare: $wheels holds ${size_kb} kB, over the 60 MB a device call carries" >&2
        exit 1
    fi
    echo "gpu_check --prepare: $(ls "$wheels" | tr '\n' ' ')(${size_kb} kB) in $wheels"
    exit 0
fi

site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
if ! "$python" -c "import diffusers" 2>/dev/null; then
    shopt -s nullglob
    found=("$wheels"/*.whl)
    if (( ${#found[@]} == 0 )); then
        echo "gpu_check: diffusers is not importable and $wheels has no wheel: run 'bash benchmarks/gpu_check.sh --prepare' where pip can download, and bring that folder" >&2
        exit 2
    fi
    for wheel in "${found[@]}"; do
        "$python" -m zipfile -e "$wheel" "$site"
    done
fi
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# Not exec: the trap must still remove the unpacked wheel when the check ends.
status=0
"$python" "$here/gpu_check.py" "$@" || status=$?
exit "$status"
