#!/usr/bin/env bash
# Builds docker/Dockerfile, unchanged, once per CUDA major (its STACK build argument: requirements/stack.txt for
# CUDA 13, requirements/stack-cuda12.txt for CUDA 12), with buildah where there is no Docker engine and no registry
# serving base images, then checks each image as its non-root user. Needs root, buildah and debootstrap (Debian
# packages).
#   1. The Dockerfile's FROM (python:3.11-slim-bookworm) is stood in for by a Debian base made here with debootstrap
#      (Debian's python3 of the same minor, python3-venv, CA certificates), committed under the FROM's name. The
#      Dockerfile only relies on `python3 -m venv` and `useradd`, which both bases have.
#   2. `buildah bud --layers` builds the Dockerfile with a layer cache, so a code change rebuilds the layers from the
#      sources' COPY on and reuses the pinned stack's (torch is not reinstalled), and the two variants share the
#      base and apt layers. The cache wants the overlay storage driver (each layer holds its own changes): with vfs,
#      every layer is a full copy of the tree below it (some 7 GB per layer above torch's, about ten of them), so
#      with vfs the build is one layer (no --layers) unless LAYERS=1. Overlay is used where the kernel lets this
#      machine mount it, else vfs.
#      pip inside the build is pointed where pip points on this machine: the PIP_INDEX_URL / PIP_EXTRA_INDEX_URL /
#      PIP_FIND_LINKS / PIP_CERT environment variables, or else this machine's pip configuration (`pip config
#      list`). Local folders among them (file:// indexes, wheel folders) and the CA bundle are bind-mounted read-only
#      into the build and passed as the Dockerfile's build arguments, so nothing of this machine is written into the
#      repository or the image's layers. The CUDA 12 stack file names its torch index itself (--extra-index-url).
#   3. Inside each image, as uid 1000: `dali-train --help`, `import nvidia.dali` and the CUDA builds, the installed
#      distributions against the stack file, the InfiniBand user space NCCL loads (ibv_devices, libibverbs.so.1 and
#      libmlx5.so.1 through dlopen as NCCL opens them, NCCL's own library and version), and a one-epoch synthetic run
#      on the CPU. Then the image's size.
# Settings (environment): VARIANTS (default "cuda13 cuda12"), IMAGE_NAME (default dali-train; images are tagged
# IMAGE_NAME:<variant>), STORAGE_DRIVER (overlay where it mounts, else vfs), LAYERS (1 with overlay, 0 with vfs),
# ISOLATION (chroot), DEBIAN_MIRROR (default: the first deb.debian.org-style URI of apt's sources, else
# http://deb.debian.org/debian), REBUILD_BASE=1 to make the base again although one of that name exists,
# SKIP_BUILD=1 to only check the images. Exits 1 when a variant could not be built or failed a check (after trying
# the others).
set -euo pipefail
cd "$(dirname "$0")/.."

image_name=${IMAGE_NAME:-dali-train}
isolation=${ISOLATION:-chroot}
say() { printf '\n=== %s\n' "$*"; }
declare -A stack_of=([cuda13]=requirements/stack.txt [cuda12]=requirements/stack-cuda12.txt)

[ "$(id -u)" = 0 ] || { echo "build-local: run as root (buildah's storage needs it)" >&2; exit 1; }

# overlay where this machine can mount it (a kernel with overlayfs, a storage root not itself on overlayfs)
overlay_mounts() {
    local d rc=1
    d=$(mktemp -d /var/tmp/build-local-overlay.XXXXXX)
    mkdir "$d/lower" "$d/upper" "$d/work" "$d/merged"
    if mount -t overlay overlay -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" "$d/merged" 2>/dev/null; then
        umount "$d/merged"
        rc=0
    fi
    rm -rf "$d"
    return $rc
}
if [ -z "${STORAGE_DRIVER:-}" ]; then
    if overlay_mounts; then STORAGE_DRIVER=overlay; else STORAGE_DRIVER=vfs; fi
fi
storage=$STORAGE_DRIVER
if [ "$storage" = vfs ]; then layers=${LAYERS:-0}; else layers=${LAYERS:-1}; fi
bh() { buildah --storage-driver "$storage" "$@"; }
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

# The checks of one image ($1) against its stack file ($2), as uid 1000; returns non-zero at the first that fails.
check_image() {
    local image=$1 stack=$2 ctr rc=0
    ctr=$(bh from --pull=never "$image") || return 1
    as_trainer() { bh run --isolation "$isolation" --user 1000:1000 --env HOME=/home/trainer --workingdir /tmp "$ctr" -- "$@"; }
    {
        say "$image: dali-train --help" && as_trainer dali-train --help >/dev/null && echo "ok" \
        && say "$image: import nvidia.dali (and the versions and CUDA builds the image runs)" \
        && as_trainer python -c "import importlib.metadata as m, os, nvidia.dali, torch, torchvision, torchao; \
print('uid', os.getuid(), '| dali', nvidia.dali.__version__, [d.metadata['Name'] for d in m.distributions() \
if d.metadata['Name'].startswith('nvidia-dali-')], 'CUDA', nvidia.dali.__cuda_version__, '| torch', torch.__version__, \
'CUDA', torch.version.cuda, '| torchvision', torchvision.__version__, '| torchao', torchao.__version__)" \
        && say "$image: installed distributions against $stack" \
        && as_trainer pip freeze --all --exclude-editable --exclude dali-train | LC_ALL=C sort -f > /tmp/build-local-freeze.txt \
        && grep -v -e '^#' -e '^-' "$stack" | LC_ALL=C sort -f > /tmp/build-local-stack.txt \
        && if diff -u /tmp/build-local-stack.txt /tmp/build-local-freeze.txt; then
               echo "identical: $(wc -l < /tmp/build-local-stack.txt) distributions"
           else
               echo "build-local: $image's distributions differ from $stack (- stack, + image)" >&2; false
           fi \
        && say "$image: InfiniBand user space for NCCL (no adapter here, so ibv_devices lists none)" \
        && as_trainer sh -c 'command -v ibv_devices && { ibv_devices || echo "(ibv_devices exited $?)"; } \
               && ldconfig -p | grep -E "libibverbs|libmlx5|librdmacm"' \
        && as_trainer python -c "import ctypes, glob, os, nvidia.nccl; \
[print('dlopen', n, 'ok') for n in ('libibverbs.so.1', 'libmlx5.so.1', 'librdmacm.so.1') if ctypes.CDLL(n)]; \
lib = glob.glob(os.path.join(list(nvidia.nccl.__path__)[0], 'lib', 'libnccl.so*'))[0]; nccl = ctypes.CDLL(lib); \
v = ctypes.c_int(); assert nccl.ncclGetVersion(ctypes.byref(v)) == 0; \
print('NCCL', v.value, os.path.basename(lib), '(its InfiniBand transport is built in and dlopens the two above at init)')" \
        && say "$image: one synthetic epoch on the CPU" \
        && as_trainer dali-train --dataset synthetic --model resnet20 --epochs 1 --num-samples 512 --device cpu --output /tmp/run \
        && as_trainer sh -c 'ls -l /tmp/run && cat /tmp/run/summary.json' \
        && say "$image: size" \
        && bh images --format '{{.Name}}:{{.Tag}}  {{.Size}}' "$image"
    } || rc=1
    bh rm "$ctr" >/dev/null 2>&1 || true
    return $rc
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
fi

failed=()
for variant in ${VARIANTS:-cuda13 cuda12}; do
    stack=${stack_of[$variant]:-}
    image=$image_name:$variant
    if [ -z "$stack" ]; then
        echo "build-local: unknown variant $variant (${!stack_of[*]})" >&2; failed+=("$variant"); continue
    fi
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        if [ ! -f "$stack" ]; then
            echo "build-local: $variant not built: $stack is missing; docker/pin-stack.sh $variant writes it" >&2
            failed+=("$variant"); continue
        fi
        say "build: $image from docker/Dockerfile with STACK=$stack ($storage storage, layer cache $([ "$layers" = 1 ] && echo on || echo off))"
        printf '  %s\n' "${build_args[@]}" "${volumes[@]}"
        layer_args=()
        [ "$layers" = 1 ] && layer_args=(--layers)
        start=$(date +%s)
        if ! bh bud --isolation "$isolation" --pull=never "${layer_args[@]}" -f docker/Dockerfile -t "$image" \
                --build-arg "STACK=$stack" "${build_args[@]}" "${volumes[@]}" .; then
            echo "build-local: $variant: the build failed after $(( $(date +%s) - start )) s" >&2
            failed+=("$variant"); continue
        fi
        echo "$variant: build took $(( $(date +%s) - start )) s"
    fi
    check_image "$image" "$stack" || { echo "build-local: $variant: a check failed" >&2; failed+=("$variant"); }
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "build-local: not built or not passing: ${failed[*]}" >&2
    exit 1
fi
