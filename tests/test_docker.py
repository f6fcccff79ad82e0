"""The Docker image ships the stack CI tests (requirements/stack.txt), and the SLURM launcher's torchrun command."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
STACK = "requirements/stack.txt"
SBATCH = ROOT / "docker" / "slurm-torchrun.sbatch"
# The oldest driver branch each CUDA major runs on (minor-version compatibility within a major).
MIN_DRIVER = {12: 525, 13: 580}


def read_stack(text: str) -> dict[str, str]:
    """Canonical name -> version; every line must be an exact pin, each distribution once."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=;@]+)", line)
        assert m, f"{STACK}: not an exact pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{STACK}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


def stack_pins() -> dict[str, str]:
    return read_stack((ROOT / STACK).read_text())


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def shell_commands(dockerfile: str) -> list[list[str]]:
    """The commands of every RUN instruction, split into words (continuations joined, split at && and ;)."""
    text = re.sub(r"\\\n", " ", dockerfile)
    commands = []
    for line in text.splitlines():
        m = re.match(r"\s*RUN\s+(.*)", line, re.IGNORECASE)
        if m:
            for part in re.split(r"&&|;|\|\|", m.group(1)):
                words = shlex.split(part, comments=True)
                if words:
                    commands.append(words)
    return commands


# pip's options that take a value, by their long name
LONG = {"-r": "--requirement", "-c": "--constraint", "-i": "--index-url", "-f": "--find-links", "-t": "--target"}
TAKES_VALUE = {"--requirement", "--constraint", "--index-url", "--extra-index-url", "--find-links", "--target",
               "--prefix", "--root", "--platform", "--python-version", "--implementation", "--abi"}


def pip_install_args(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """The words after `pip install` as {long option: [values]} and the positional requirement specifiers."""
    options: dict[str, list[str]] = {}
    positional = []
    words = iter(args)
    for word in words:
        if not word.startswith("-"):
            positional.append(word)
            continue
        name, eq, value = word.partition("=")
        name = LONG.get(name, name)
        if name in TAKES_VALUE and not eq:
            value = next(words, "")
        options.setdefault(name, []).append(value)
    return options, positional


def stack_problems(dockerfile: str, pins: dict[str, str]) -> list[str]:
    """Why the Dockerfile's pip installs would not give exactly the pinned stack ([] when they do)."""
    problems = []
    installs_stack = False
    for words in shell_commands(dockerfile):
        if not {"pip", "pip3"} & {Path(w).name for w in words[:3]} or "install" not in words:
            continue
        options, positional = pip_install_args(words[words.index("install") + 1:])
        requirement_files = options.get("--requirement", [])
        constraints = options.get("--constraint", [])
        for key in ("--index-url", "--extra-index-url", "--find-links"):
            for value in options.get(key, []):
                problems.append(f"`{' '.join(words)}` adds a package source ({value}): another build of a pinned "
                                f"version could come from it; package sources are build arguments")
        for file in requirement_files:
            if file != STACK:
                problems.append(f"`{' '.join(words)}` installs from {file}, not {STACK}")
            elif "--no-deps" not in options:
                problems.append(f"`{' '.join(words)}` lets pip add dependencies beyond {STACK} (needs --no-deps)")
            else:
                installs_stack = True
        for spec in positional:
            if spec == ".":
                if "--no-deps" not in options and STACK not in constraints:
                    problems.append(f"`{' '.join(words)}` resolves the project's dependencies without {STACK}")
                continue
            req = Requirement(spec)
            pinned = pins.get(canonicalize_name(req.name))
            if pinned is None:
                problems.append(f"`{' '.join(words)}` installs {req.name}, which {STACK} does not pin")
            elif req.specifier and str(req.specifier) != f"=={pinned}":
                problems.append(f"`{' '.join(words)}` installs {spec}; {STACK} pins {req.name}=={pinned}")
            elif not req.specifier and STACK not in constraints:
                problems.append(f"`{' '.join(words)}` installs {req.name} unpinned (no -c {STACK})")
    # a default package source in the Dockerfile itself (a build argument without a value is only a hook)
    for m in re.finditer(r"^(?:ENV|ARG)\s+(PIP_(?:INDEX_URL|EXTRA_INDEX_URL|FIND_LINKS))[= ]\s*(\S+)", dockerfile,
                         re.MULTILINE):
        problems.append(f"{m.group(1)} defaults to {m.group(2)} in the Dockerfile: package sources are build arguments")
    if not installs_stack:
        problems.append(f"no `pip install --no-deps -r {STACK}`: the image does not install the pinned stack")
    return problems


def test_stack_pins_every_runtime_dependency_at_a_version_pyproject_allows() -> None:
    pins = stack_pins()
    project = pyproject()["project"]
    for dep in project["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{STACK} lacks {req.name}: rerun docker/pin-stack.sh"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} breaks {dep!r}"
    # the runtime stack only: test tools are not shipped in the image
    for dep in project["optional-dependencies"]["test"]:
        assert canonicalize_name(Requirement(dep).name) not in pins, f"{STACK} pins the test tool {dep}"


def test_stack_holds_the_dependencies_of_what_it_pins() -> None:
    # The image installs the list with --no-deps, so it must be closed under dependencies (torch's CUDA libraries
    # and triton, DALI's codecs, the extras torch asks of cuda-toolkit), as read from the installed metadata.
    pins = stack_pins()
    todo = [(name, frozenset()) for name in pins]
    seen = set()
    missing = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue  # reported by test_the_environment_under_test_is_the_pinned_stack
        for spec in requires:
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                continue
            dep = canonicalize_name(req.name)
            if dep not in pins:
                missing.add(f"{dep} (for {name})")
            else:
                todo.append((dep, frozenset(req.extras)))
    assert not missing, f"{STACK} lacks {sorted(missing)}: rerun docker/pin-stack.sh"


@pytest.mark.parametrize("bad", ["torch>=2.4", "torch==2.14.1\ntorch==2.14.1", "torch @ file:///wheels/torch.whl"])
def test_stack_reader_refuses_what_is_not_one_exact_pin(bad) -> None:
    with pytest.raises(AssertionError):
        read_stack(bad)


def test_the_environment_under_test_is_the_pinned_stack() -> None:
    # CI installs with `-c requirements/stack.txt`: this is where a missing or ignored constraint shows. pip itself
    # is the installer, not part of what runs.
    wrong = {}
    for name, version in stack_pins().items():
        if name == "pip":
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, (f"(pinned, installed) {wrong}: reinstall with pip install -c {STACK} -e '.[test]', or "
                       f"rerun docker/pin-stack.sh if pyproject.toml changed")


def test_dockerfile_installs_exactly_the_stack() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert stack_problems(dockerfile, stack_pins()) == []
    # the stack file is in the image before it is installed from
    copy = re.search(rf"^COPY\s+{re.escape(STACK)}\s", dockerfile, re.MULTILINE)
    install = re.search(rf"-r {re.escape(STACK)}", dockerfile)
    assert copy and install and copy.start() < install.start()
    # `pip check` after the installs: an incomplete list fails the build instead of running half-installed
    assert dockerfile.count("pip check") >= 2


@pytest.mark.parametrize("dockerfile, expected", [
    # torch and torchvision from another index, torchao at another version: nothing ties them to the stack
    ("RUN pip install --extra-index-url https://download.pytorch.org/whl/cu128 torch==2.9.1 torchvision==0.24.1 \\\n"
     "    && pip install torchao==0.14.1\nRUN pip install .\n",
     ["package source", "torch==2.9.1", "torchvision==0.24.1", "torchao==0.14.1", "without requirements/stack.txt",
      "does not install the pinned stack"]),
    ("RUN pip install -r requirements/other.txt && pip install numpy\n", ["not requirements/stack.txt", "numpy"]),
    ("RUN pip install -r requirements/stack.txt\n", ["needs --no-deps"]),
    ("ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu128\n"
     "RUN pip install --no-deps -r requirements/stack.txt && pip3 install torch\n",
     ["PIP_EXTRA_INDEX_URL defaults to", "torch unpinned"]),
])
def test_stack_check_catches_a_dockerfile_that_drifts(dockerfile, expected) -> None:
    pins = {"torch": "2.14.1", "torchvision": "0.29.1", "torchao": "0.18.0", "numpy": "2.4.6"}
    problems = "\n".join(stack_problems(dockerfile, pins))
    for fragment in expected:
        assert fragment in problems, problems


def test_dockerfile_base_has_the_python_the_stack_was_resolved_for() -> None:
    header = re.search(r"^# Resolved for: CPython (\d+\.\d+)", (ROOT / STACK).read_text(), re.MULTILINE)
    base = re.search(r"^FROM\s+python:(\d+\.\d+)-", (ROOT / "docker" / "Dockerfile").read_text(), re.MULTILINE)
    assert header and base, "the stack's header or the Dockerfile's python base is missing"
    assert base.group(1) == header.group(1)


def test_dockerfile_states_the_driver_the_stacks_cuda_needs() -> None:
    # The newest CUDA major among the pinned builds (torch's nvidia-*-cuNN libraries, nvidia-dali-cudaNNN) sets the
    # driver the host needs; the Dockerfile's header says which.
    majors = set()
    for name in stack_pins():
        m = re.search(r"-cu(\d{2})$", name) or re.fullmatch(r"nvidia-dali-cuda(\d{2})\d", name)
        if m:
            majors.add(int(m.group(1)))
    assert majors, "no CUDA build in the stack"
    driver = MIN_DRIVER[max(majors)]
    assert f"driver >= {driver}" in (ROOT / "docker" / "Dockerfile").read_text()


def test_ci_installs_under_the_stack_and_runs_the_readme_test_command() -> None:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert f'pip install -c {STACK} -e ".[test]" && python -m pytest -q' in lines
    assert any(f"-c {STACK}" in line and line.rstrip().endswith(" pip") for line in lines), \
        "CI's pip is not the pinned one"


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    sources = []
    for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    assert STACK in sources and "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        hit = [p for p in patterns if fnmatch.fnmatch(source, p) or fnmatch.fnmatch(source.split("/")[0], p)]
        assert not hit, f".dockerignore {hit} drops {source}, which the Dockerfile copies"


@pytest.mark.parametrize("script", ["build-local.sh", "pin-stack.sh", "slurm-torchrun.sbatch"])
def test_scripts_parse_and_are_executable(script) -> None:
    path = ROOT / "docker" / script
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert path.stat().st_mode & stat.S_IXUSR, f"chmod +x docker/{script}"


def dry_run(tmp_path: Path, args: list[str] = (), **env: str) -> subprocess.CompletedProcess:
    """The sbatch script with DRY_RUN=1 and a stand-in `scontrol` that expands the node list as SLURM would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\n'
                        'printf "%s\\n" gpu-a07 gpu-a08 gpu-b01 gpu-b02\n')
    scontrol.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # a real job's must not leak in
    base.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", DRY_RUN="1")
    return subprocess.run(["bash", str(SBATCH), *args], capture_output=True, text=True, env={**base, **env},
                          cwd=tmp_path, timeout=60)


def option(words: list[str], name: str) -> str:
    """The value of `--name=value` or `--name value` in a command."""
    for i, word in enumerate(words):
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
        if word == name:
            return words[i + 1]
    raise AssertionError(f"{name} missing from {words}")


def test_sbatch_runs_one_torchrun_per_node_with_the_first_host_as_rendezvous(tmp_path) -> None:
    proc = dry_run(tmp_path, ["--epochs", "90", "--data-dir", "/shared/cifar"],
                   SLURM_JOB_NODELIST="gpu-a[07-08],gpu-b[01-02]", SLURM_NNODES="4", SLURM_GPUS_ON_NODE="8",
                   SLURM_JOB_ID="4242")
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    assert words[0] == "srun" and option(words, "--ntasks-per-node") == "1"
    torchrun = words[words.index("torchrun"):]
    assert option(torchrun, "--nnodes") == "4"
    assert option(torchrun, "--nproc_per_node") == "8"
    assert option(torchrun, "--rdzv-endpoint") == "gpu-a07:29500"
    assert option(torchrun, "--rdzv-backend") == "c10d" and option(torchrun, "--rdzv-id") == "4242"
    assert torchrun[torchrun.index("-m") + 1] == "training"
    # the LR is dali-train's to scale (--lr-base to the global batch it runs with): the script passes none
    assert option(torchrun, "--batch-size") == "128"
    assert "--lr" not in torchrun and "--lr-base" not in torchrun
    assert "global batch 4096 (dali-train scales --lr-base to it)" in proc.stderr
    # the job's own arguments come last, so they win over the script's defaults (--data-dir here)
    assert words[-4:] == ["--epochs", "90", "--data-dir", "/shared/cifar"]


def test_sbatch_defaults_and_settings(tmp_path) -> None:
    # no GPUs asked for: one process per node; another port, batch and base LR
    proc = dry_run(tmp_path, SLURM_JOB_NODELIST="gpu-a[07-08]", SLURM_NNODES="2", RDZV_PORT="31000",
                   BATCH_SIZE="256", BASE_LR="0.05", OUTPUT="/shared/runs/x")
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    assert option(words, "--nproc_per_node") == "1"
    assert option(words, "--rdzv-endpoint") == "gpu-a07:31000"
    assert option(words, "--batch-size") == "256"
    assert option(words, "--lr-base") == "0.05" and "--lr" not in words  # BASE_LR: dali-train scales it
    assert option(words, "--output") == "/shared/runs/x"
    # NPROC_PER_NODE overrides SLURM's GPU count, and SRUN_ARGS reach srun (a container runtime's options)
    proc = dry_run(tmp_path, SLURM_JOB_NODELIST="gpu-a07", SLURM_NNODES="1", SLURM_GPUS_ON_NODE="8",
                   NPROC_PER_NODE="4", SRUN_ARGS="--container-image=dali-train.sqsh --container-mounts=/shared")
    words = shlex.split(proc.stdout)
    assert option(words, "--nproc_per_node") == "4"
    assert words.index("--container-image=dali-train.sqsh") < words.index("torchrun")


def test_sbatch_refuses_a_missing_allocation(tmp_path) -> None:
    proc = dry_run(tmp_path, DRY_RUN="0")
    assert proc.returncode != 0 and "not inside a SLURM allocation" in proc.stderr and proc.stdout == ""
    assert "DRY_RUN=1" in proc.stderr  # how to preview instead


def test_sbatch_dry_run_outside_an_allocation_previews_the_job_from_the_environment(tmp_path) -> None:
    proc = dry_run(tmp_path, ["--model", "resnet10t"], HEAD_NODE="login-1")  # the defaults: 2 nodes x 8 GPUs
    assert proc.returncode == 0, proc.stderr
    assert "not inside a SLURM allocation; previewing NNODES=2 GPUS_PER_NODE=8" in proc.stderr
    words = shlex.split(proc.stdout)
    torchrun = words[words.index("torchrun"):]
    assert option(torchrun, "--nnodes") == "2" and option(torchrun, "--nproc_per_node") == "8"
    assert option(torchrun, "--rdzv-endpoint") == "login-1:29500"
    assert words[-2:] == ["--model", "resnet10t"]
    proc = dry_run(tmp_path, NNODES="4", GPUS_PER_NODE="4", HEAD_NODE="n1")
    torchrun = shlex.split(proc.stdout)
    assert option(torchrun, "--nnodes") == "4" and option(torchrun, "--nproc_per_node") == "4"
    proc = dry_run(tmp_path, NNODES="two")
    assert proc.returncode == 2 and "must be whole numbers" in proc.stderr and proc.stdout == ""


def test_dockerfile_is_ready_for_gpu_runtimes_infiniband_and_signals() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    env = dict(re.findall(r"^\s+(NVIDIA_\w+|MPLCONFIGDIR)=(\S+?)(?: \\)?$", text, re.M))
    # the toolkit's mounts without --gpus (Kubernetes, CDI, enroot); video: NVDEC for DALI's mixed decoder
    assert env == {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility,video",
                   "MPLCONFIGDIR": "/tmp/matplotlib"}
    for key in ("source", "version", "revision"):
        assert re.search(rf'org\.opencontainers\.image\.{key}="\$\{{{key.upper()}\}}"', text), key
        assert re.search(rf"^ARG {key.upper()}\b", text, re.M), key
    installed = re.search(r"apt-get install -y --no-install-recommends ([^&]+)&&", text.replace("\\\n", " "))
    assert installed, "no apt-get install"
    packages = {p.split("=")[0] for p in installed.group(1).split()}
    assert {"tini", "libibverbs1", "ibverbs-providers", "librdmacm1"} <= packages  # NCCL's InfiniBand transport
    assert 'ENTRYPOINT ["tini", "--", "dali-train"]' in text
