#!/usr/bin/env bash
# Builds docker/Dockerfile, unchanged, with buildah where there is no Docker engine and no registry serving base
# images, then checks the image as its non-root user. Needs root, buildah and debootstrap (Debian packages).
#   1. The Dockerfile's FROM (python:3.11-slim-bookworm) is stood in for by a Debian base made here with debootstrap
#      (Debian's python3 of the same minor, python3-venv, CA certificates), committed under the FROM's name. The
#      Dockerfile only relies on `python3 -m venv` and `useradd`, which both bases have.
#   2. `buildah bud` builds the Dockerfile. pip inside the build is pointed where pip points on this machine: the
#      PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS / PIP_CERT environment variables, or else this machine's
#      pip configuration (`pip config list`). Local folders among them (file:// indexes, wheel folders) and the CA
#      bundle are bind-mounted read-only into the build and passed as the Dockerfile's build arguments, so nothing
#      of this machine is written into the repository or the image's layers.
#   3. Inside the image, as uid 1000: `dali-train --help`, `import nvidia.dali`, the installed distributions against
#      requirements/stack.txt, and a one-epoch synthetic run on the CPU. Then the image's size.
# Settings (environment): IMAGE (default dali-train:local), STORAGE_DRIVER (vfs), ISOLATION (chroot),
# DEBIAN_MIRROR (default: the first deb.debian.org-style URI of apt's sources, else http://deb.debian.org/debian),
# REBUILD_BASE=1 to make the base again although one of that name exists, SKIP_BUILD=1 to only check an image.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${IMAGE:-dali-train:local}
storage=${STORAGE_DRIVER:-vfs}
isolation=${ISOLATION:-chroot}
bh() { buildah --storage-driver "$storage" "$@"; }
say() { printf '\n=== %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "build-local: run as root (buildah with the $storage driver)" >&2; exit 1; }
for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "build-local: $tool is missing: apt-get install -y buildah debootstrap" >&2; exit 1; }
done

# The base the Dockerfile names, as a fully qualified reference, so that the lookup by the short name finds it.
from=$(awk 'toupper($1) == "FROM" { print $2; exit }' docker/Dockerfile)
case "$from" in
    */*) base_ref=$from ;;
    *) base_ref=docker.io/library/$from ;;
esac
# python:3.11-slim-bookworm -> Python 3.11 on Debian bookworm: the stand-in must have the same interpreter minor.
tag=${from##*:}
py_minor=$(sed -n 's/^\([0-9]*\.[0-9]*\).*/\1/p' <<<"$tag")
suite=${tag##*-}
[ -n "$py_minor" ] && [ "$suite" != "$tag" ] \
    || { echo "build-local: cannot read a Python version and Debian suite from FROM $from" >&2; exit 1; }

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

make_base() {
    say "base: $base_ref from Debian $suite ($mirror) with debootstrap"
    local ctr mnt
    ctr=$(bh from scratch)
    mnt=$(bh mount "$ctr")
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$mnt" "$mirror"
    chroot "$mnt" python3 -c "import sys, venv; v = '%d.%d' % sys.version_info[:2]; assert v == '$py_minor', v; print('python3', sys.version.split()[0])"
    chroot "$mnt" apt-get clean
    rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/*.bin
    bh unmount "$ctr" >/dev/null
    bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd python3 --label "org.opencontainers.image.description=local stand-in for $from (debootstrap $suite)" "$ctr"
    bh commit --rm "$ctr" "$base_ref"
}

# One pip setting: the environment variable, else the value in this machine's pip configuration (the last file wins).
pip_setting() {
    local env_name=$1 key=$2 value
    value=${!env_name:-}
    if [ -z "$value" ]; then
        value=$(python3 -m pip config list 2>/dev/null \
            | sed -n "s/^[^.]*\.$key='\(.*\)'\$/\1/p" | tail -n1 || true)
    fi
    printf '%s' "$value"
}

build_args=()
volumes=()
declare -A mounted=()
mount_ro() {
    local path=$1
    [ -e "$path" ] || { echo "build-local: $path (from pip's settings) does not exist; not mounted" >&2; return 0; }
    [ -n "${mounted[$path]:-}" ] && return 0
    mounted[$path]=1
    volumes+=(--volume "$path:$path:ro")
}
collect_pip_settings() {
    local name key value entry path
    for name in PIP_INDEX_URL:index-url PIP_EXTRA_INDEX_URL:extra-index-url PIP_FIND_LINKS:find-links; do
        key=${name#*:}
        name=${name%%:*}
        value=$(pip_setting "$name" "$key")
        [ -n "$value" ] || continue
        build_args+=(--build-arg "$name=$value")
        for entry in $value; do
            case "$entry" in
                file://*) path=${entry#file://} ;;
                /*) path=$entry ;;
                *) continue ;;
            esac
            path=${path%/}
            # A file:// "simple" index links its files relative to itself (../../files/...): mount its parent.
            if [ "$key" != find-links ] && [ "${path##*/}" = simple ]; then
                path=${path%/*}
            fi
            mount_ro "$path"
        done
    done
    value=$(pip_setting PIP_CERT cert)
    if [ -n "$value" ]; then
        # A proxy that re-signs TLS needs its CA inside the build too; mounted under a fixed name.
        volumes+=(--volume "$value:/run/build-pip-ca.pem:ro")
        build_args+=(--build-arg PIP_CERT=/run/build-pip-ca.pem)
    fi
}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    if [ "${REBUILD_BASE:-0}" = 1 ] || ! bh inspect --type image "$base_ref" >/dev/null 2>&1; then
        make_base
    else
        say "base: $base_ref already here (REBUILD_BASE=1 to make it again)"
    fi
    collect_pip_settings
    # The OCI labels: the project's version, the commit (+dirty when the tree has uncommitted changes), the remote.
    build_args+=(--build-arg "VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)")
    revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    [ -z "$(git status --porcelain 2>/dev/null)" ] || revision+=+dirty
    build_args+=(--build-arg "REVISION=$revision")
    build_args+=(--build-arg "SOURCE=$(git remote get-url origin 2>/dev/null || true)")
    say "build: $image from docker/Dockerfile"
    printf '  %s\n' "${build_args[@]}" "${volumes[@]}"
    start=$(date +%s)
    bh bud --isolation "$isolation" --pull=never -f docker/Dockerfile -t "$image" \
        "${build_args[@]}" "${volumes[@]}" .
    echo "build took $(( $(date +%s) - start )) s"
fi

say "checks inside $image as uid 1000"
ctr=$(bh from --pull=never "$image")
trap 'bh rm "$ctr" >/dev/null 2>&1 || true' EXIT
as_trainer() { bh run --isolation "$isolation" --user 1000:1000 --env HOME=/home/trainer --workingdir /tmp "$ctr" -- "$@"; }

say "dali-train --help"
as_trainer dali-train --help
say "import nvidia.dali (and the versions the image runs)"
as_trainer python -c "import nvidia.dali, torch, torchvision, torchao; print('uid', __import__('os').getuid(), \
'| dali', nvidia.dali.__version__, '| torch', torch.__version__, 'CUDA', torch.version.cuda, \
'| torchvision', torchvision.__version__, '| torchao', torchao.__version__)"
say "installed distributions against requirements/stack.txt"
as_trainer pip freeze --all --exclude-editable --exclude dali-train | LC_ALL=C sort -f > /tmp/build-local-freeze.txt
grep -v '^#' requirements/stack.txt | LC_ALL=C sort -f > /tmp/build-local-stack.txt
if diff -u /tmp/build-local-stack.txt /tmp/build-local-freeze.txt; then
    echo "identical: $(wc -l < /tmp/build-local-stack.txt) distributions"
else
    echo "build-local: the image's distributions differ from requirements/stack.txt (- stack, + image)" >&2
    exit 1
fi
say "one synthetic epoch on the CPU"
as_trainer dali-train --dataset synthetic --model resnet20 --epochs 1 --num-samples 512 --device cpu --output /tmp/run
as_trainer sh -c 'ls -l /tmp/run && cat /tmp/run/summary.json'

say "image size"
bh images --format '{{.Name}}:{{.Tag}}  {{.Size}}' "$image"
