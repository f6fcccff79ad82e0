#!/usr/bin/env bash
# Writes requirements/stack.txt, the one pinned list of the runtime stack: every distribution that
# `pip install -e .` resolves in a fresh virtual environment (the project's own dependencies, no test extra), at an
# exact version. CI installs with `-c requirements/stack.txt` and the Docker image installs exactly this list, so
# the image carries the versions the tests ran on. Rerun after changing a dependency in pyproject.toml, and commit
# the file together with that change.
#   docker/pin-stack.sh            # resolves with `python3`; PYTHON=python3.11 docker/pin-stack.sh for another one
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=requirements/stack.txt

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
"$tmp/venv/bin/python" -m pip install --quiet -e .
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
    echo "# The runtime stack, pinned: written by docker/pin-stack.sh from what \`pip install -e .\` resolves; do not edit."
    echo "# Resolved for: $tag"
    echo "# Used by .ci/run (pip install -c) and docker/Dockerfile (pip install -r), so CI and the image agree."
    echo "$frozen"
} > "$out"
echo "pin-stack: wrote $out ($(grep -c '==' "$out") pins, $tag)"
