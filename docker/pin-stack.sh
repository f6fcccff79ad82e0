#!/usr/bin/env bash
# Writes a pinned list of the runtime stack for one CUDA major: every distribution that `pip install -e ".[cudaNN]"`
# resolves in a fresh virtual environment (the project's dependencies and that DALI build, no test extra), at an
# exact version.
#   cuda13 (default) -> requirements/stack.txt: torch from PyPI (a CUDA 13.0 build), nvidia-dali-cuda130. CI installs
#                       with `-c requirements/stack.txt`; the Docker image installs exactly this list by default.
#   cuda12           -> requirements/stack-cuda12.txt: torch and torchvision from TORCH_INDEX (default
#                       https://download.pytorch.org/whl/cu126, which has torch 2.14's CUDA 12 build), everything else
#                       from PyPI, nvidia-dali-cuda120. The file's first line names that index, so
#                       `pip install -c requirements/stack-cuda12.txt ".[cuda12]"` and the image (STACK build argument)
#                       find the +cu126 wheels it pins.
# The distributions both majors share (all but torch, torchvision, triton, DALI and the nvidia-*/cuda-* CUDA
# libraries) are held to their versions in requirements/stack.txt as it stands, so a rerun moves only what a
# change needs and the two files agree; FRESH=1 resolves everything at the newest versions instead (then rerun the
# other variant too). Rerun both after changing a dependency in pyproject.toml, and commit the files together with
# that change; tests/test_docker.py checks each against pyproject.toml and the two against each other.
#   docker/pin-stack.sh [cuda13|cuda12]   # resolves with `python3`; PYTHON=python3.11 docker/pin-stack.sh for another
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
variant=${1:-cuda13}
index_args=()
case "$variant" in
    cuda13) out=requirements/stack.txt; major=13 ;;
    cuda12) out=requirements/stack-cuda12.txt; major=12
            index_args=(--extra-index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cu126}") ;;
    *) echo "pin-stack: unknown variant $variant: cuda13 or cuda12" >&2; exit 2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
held=()
if [ "${FRESH:-0}" != 1 ] && [ -f requirements/stack.txt ]; then
    grep -E '^[A-Za-z0-9]' requirements/stack.txt \
        | grep -v -i -E '^(torch|torchvision|triton|cuda-[^=]*|nvidia-(dali|cu|nv|nccl|libnv)[^=]*)==' \
        > "$tmp/shared.txt"
    held=(-c "$tmp/shared.txt")
fi
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet "${held[@]}" --upgrade pip
"$tmp/venv/bin/python" -m pip install --quiet "${held[@]}" "${index_args[@]}" -e ".[$variant]"
# torch's CUDA must be the variant's major: an index that lacks the wanted build lets pip take PyPI's (another major).
torch_cuda=$("$tmp/venv/bin/python" -c 'import torch; print(torch.version.cuda or "none")')
if [ "${torch_cuda%%.*}" != "$major" ]; then
    echo "pin-stack: torch resolved with CUDA $torch_cuda, not CUDA $major (${index_args[*]:-PyPI}); not writing $out" >&2
    exit 1
fi
# The wheels resolved are for this interpreter and platform; the Dockerfile's base image must match them.
tag=$("$tmp/venv/bin/python" -c 'import platform, sys; print(f"CPython {sys.version_info.major}.{sys.version_info.minor} {platform.system()} {platform.machine()}")')
frozen=$("$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | LC_ALL=C sort -f)
if grep -q ' @ ' <<<"$frozen"; then
    echo "pin-stack: some distribution came from a direct URL, not an index; it cannot be pinned by version:" >&2
    grep ' @ ' <<<"$frozen" >&2
    exit 1
fi
mkdir -p "$(dirname "$out")"
{
    [ ${#index_args[@]} -eq 0 ] || echo "${index_args[*]}"
    echo "# The runtime stack for CUDA $major (torch's CUDA $torch_cuda), pinned: written by docker/pin-stack.sh $variant from what"
    echo "# \`pip install -e \".[$variant]\"\` resolves; do not edit."
    echo "# Resolved for: $tag$([ ${#held[@]} -eq 0 ] || echo "; shared distributions held to requirements/stack.txt")"
    if [ "$variant" = cuda13 ]; then
        echo "# Used by .ci/run (pip install -c) and docker/Dockerfile (pip install -r), so CI and the image agree."
    else
        echo "# Used by \`pip install -c $out \".[$variant]\"\` and docker/Dockerfile (--build-arg STACK=$out)."
    fi
    echo "$frozen"
} > "$out"
echo "pin-stack: wrote $out ($(grep -c '==' "$out") pins, $tag, torch CUDA $torch_cuda)"
