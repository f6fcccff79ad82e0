"""The pinned stacks (requirements/stack.txt, CUDA 13, what CI tests; requirements/stack-cuda12.txt), the Docker image
that installs either, and the SLURM launcher's torchrun command."""

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
from packaging.version import Version

from dali_pipes.cuda_fit import DALI_BUILDS, INSTALL, MIN_DRIVER

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
STACK = "requirements/stack.txt"  # CUDA 13: CI's, and the image's default
# The pinned stack of each CUDA major, written by docker/pin-stack.sh cudaNN, and the extra each installs.
STACKS = {13: STACK, 12: "requirements/stack-cuda12.txt"}
SBATCH = ROOT / "docker" / "slurm-torchrun.sbatch"
# The one package source a stack file may name: torch's index of CUDA 12.x builds (PyPI's torch is CUDA 13's).
TORCH_INDEX = re.compile(r"--extra-index-url https://download\.pytorch\.org/whl/cu(\d{2})\d")


def read_stack(text: str, file: str = STACK) -> dict[str, str]:
    """Canonical name -> version; every line must be an exact pin (or torch's CUDA index), each distribution once."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or TORCH_INDEX.fullmatch(line):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=;@]+)", line)
        assert m, f"{file}: not an exact pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{file}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


def stack_pins(major: int = 13) -> dict[str, str]:
    return read_stack((ROOT / STACKS[major]).read_text(), STACKS[major])


def written(major: int) -> None:
    """Skip where docker/pin-stack.sh has not written this major's stack (it needs torch's CUDA 12 index)."""
    if not (ROOT / STACKS[major]).exists():
        pytest.skip(f"{STACKS[major]} is not written: docker/pin-stack.sh cuda{major} resolves it where "
                    "https://download.pytorch.org/whl/cu126 can be reached")


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


def with_stack(dockerfile: str, stack: str) -> str:
    """The Dockerfile as built with --build-arg STACK=`stack`."""
    return re.sub(r"\$\{STACK\}|\$STACK\b", stack, dockerfile)


def stack_problems(dockerfile: str, pins: dict[str, str], stack: str = STACK) -> list[str]:
    """Why the Dockerfile's pip installs would not give exactly the pinned `stack` ([] when they do)."""
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
            if file != stack:
                problems.append(f"`{' '.join(words)}` installs from {file}, not {stack}")
            elif "--no-deps" not in options:
                problems.append(f"`{' '.join(words)}` lets pip add dependencies beyond {stack} (needs --no-deps)")
            else:
                installs_stack = True
        for spec in positional:
            if spec == ".":
                if "--no-deps" not in options and stack not in constraints:
                    problems.append(f"`{' '.join(words)}` resolves the project's dependencies without {stack}")
                continue
            req = Requirement(spec)
            pinned = pins.get(canonicalize_name(req.name))
            if pinned is None:
                problems.append(f"`{' '.join(words)}` installs {req.name}, which {stack} does not pin")
            elif req.specifier and str(req.specifier) != f"=={pinned}":
                problems.append(f"`{' '.join(words)}` installs {spec}; {stack} pins {req.name}=={pinned}")
            elif not req.specifier and stack not in constraints:
                problems.append(f"`{' '.join(words)}` installs {req.name} unpinned (no -c {stack})")
    # a default package source in the Dockerfile itself (a build argument without a value is only a hook)
    for m in re.finditer(r"^(?:ENV|ARG)\s+(PIP_(?:INDEX_URL|EXTRA_INDEX_URL|FIND_LINKS))[= ]\s*(\S+)", dockerfile,
                         re.MULTILINE):
        problems.append(f"{m.group(1)} defaults to {m.group(2)} in the Dockerfile: package sources are build arguments")
    if not installs_stack:
        problems.append(f"no `pip install --no-deps -r {stack}`: the image does not install the pinned stack")
    return problems


@pytest.mark.parametrize("major", sorted(STACKS))
def test_stack_pins_every_runtime_dependency_at_a_version_pyproject_allows(major) -> None:
    written(major)
    pins, file = stack_pins(major), STACKS[major]
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    for dep in project["dependencies"] + extras[f"cuda{major}"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{file} lacks {req.name}: rerun docker/pin-stack.sh cuda{major}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} breaks {dep!r}"
    # the runtime stack only: test tools are not shipped in the image, and the other major's DALI is not in it
    for dep in extras["test"] + [d for m in STACKS if m != major for d in extras[f"cuda{m}"]]:
        assert canonicalize_name(Requirement(dep).name) not in pins, f"{file} pins {dep}"


def cuda_problems(pins: dict[str, str], major: int, index: int | None) -> list[str]:
    """Why a stack's CUDA builds are not all of CUDA `major` ([] when they are): its DALI build, torch's build (the
    local label, and the index of CUDA 12 builds it names, `index`: cu126 -> 12), the nvidia-*-cuNN libraries and
    the CUDA 13 wheels without a suffix, cuda-toolkit and cuda-bindings."""
    problems = []
    dali = sorted(name for name in pins if name.startswith("nvidia-dali-"))
    if dali != [name for name, m in DALI_BUILDS.items() if m == major]:
        problems.append(f"DALI builds {dali}, not CUDA {major}'s")
    label = Version(pins.get("torch", "0")).local or ""
    cu = re.fullmatch(r"cu(\d{2})\d", label)
    # PyPI's torch carries no label (its CUDA is PyPI's default, 13); a labelled build names its CUDA
    if (int(cu.group(1)) if cu else 13 if not label else None) != major:
        problems.append(f"torch=={pins.get('torch')} is not a CUDA {major} build")
    if major != 13 and index != major:
        problems.append(f"torch's CUDA {major} builds need their index (--extra-index-url ...cu{major}x), not {index}")
    if major == 13 and index is not None:
        problems.append("the CUDA 13 stack names another package source; PyPI holds it")
    for name, version in pins.items():
        suffix = re.search(r"-cu(\d{2})$", name)
        if suffix and int(suffix.group(1)) != major:
            problems.append(f"{name} is a CUDA {suffix.group(1)} library")
        # CUDA 13's libraries dropped the suffix (nvidia-cublas); CUDA 12's have it (nvidia-cublas-cu12)
        if major == 12 and re.fullmatch(r"nvidia-(cu|nv|nccl|libnv)[a-z0-9-]*", name) and not suffix \
                and name not in DALI_BUILDS:
            problems.append(f"{name} is a CUDA 13 library")
        if name in ("cuda-toolkit", "cuda-bindings") and Version(version).major != major:
            problems.append(f"{name}=={version} is CUDA {Version(version).major}'s")
    return problems


def shared_disagreements(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """The distributions two stacks both pin at other public versions, CUDA libraries aside (+cu126 and PyPI's build
    of one torch release agree)."""
    cuda = re.compile(r"nvidia-(dali|cu|nv|nccl|libnv)[a-z0-9-]*|cuda-[a-z0-9-]+")
    return [f"{name}: {a[name]} / {b[name]}" for name in sorted(a.keys() & b.keys())
            if not cuda.fullmatch(name) and Version(a[name]).public != Version(b[name]).public]


def stack_index(major: int) -> int | None:
    m = TORCH_INDEX.search((ROOT / STACKS[major]).read_text())
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("major", sorted(STACKS))
def test_each_stack_holds_the_cuda_builds_of_its_major(major) -> None:
    written(major)
    assert cuda_problems(stack_pins(major), major, stack_index(major)) == []


def test_the_two_stacks_agree_on_everything_but_cuda() -> None:
    written(12)
    assert shared_disagreements(stack_pins(13), stack_pins(12)) == []


def test_the_drift_checks_catch_a_stack_of_the_wrong_major() -> None:
    cu13 = {"torch": "2.14.1", "nvidia-dali-cuda130": "2.4.0", "nvidia-cublas": "13.1.1.3",
            "nvidia-cudnn-cu13": "9.24.0.43", "cuda-toolkit": "13.0.3.0", "numpy": "2.4.6", "timm": "1.0.31"}
    cu12 = {"torch": "2.14.1+cu126", "nvidia-dali-cuda120": "2.4.0", "nvidia-cublas-cu12": "12.6.4.1",
            "nvidia-cudnn-cu12": "9.10.2.21", "numpy": "2.4.6", "timm": "1.0.31", "torchao": "0.18.0+cu126"}
    assert cuda_problems(cu13, 13, None) == [] and cuda_problems(cu12, 12, 12) == []
    assert shared_disagreements(cu13, {**cu12, "torchao": "0.18.0"}) == []
    problems = "\n".join(cuda_problems({**cu12, "nvidia-dali-cuda130": "2.4.0", "nvidia-cublas": "13.1.1.3"}, 12, 12))
    assert "DALI builds ['nvidia-dali-cuda120', 'nvidia-dali-cuda130']" in problems
    assert "nvidia-cublas is a CUDA 13 library" in problems
    assert "torch==2.14.1 is not a CUDA 12 build" in "\n".join(cuda_problems({**cu12, "torch": "2.14.1"}, 12, 12))
    assert "need their index" in "\n".join(cuda_problems(cu12, 12, None))
    assert "nvidia-cudnn-cu12 is a CUDA 12 library" in "\n".join(cuda_problems({**cu13, "nvidia-cudnn-cu12": "9"}, 13, None))
    assert shared_disagreements(cu13, {**cu12, "numpy": "2.4.5"}) == ["numpy: 2.4.6 / 2.4.5"]


def test_the_extras_install_one_dali_build_each_and_the_fix_commands_name_them() -> None:
    # dali_pipes.cuda_fit's fixes install `.[cudaNN]` under STACKS[NN]; the README gives the same commands
    extras = pyproject()["project"]["optional-dependencies"]
    readme = (ROOT / "README.md").read_text()
    for major, stack in STACKS.items():
        assert [canonicalize_name(Requirement(d).name) for d in extras[f"cuda{major}"]] == \
            [name for name, m in DALI_BUILDS.items() if m == major]
        assert INSTALL[major] == f'pip install -c {stack} ".[cuda{major}]"'
        assert INSTALL[major].replace('".', '-e ".') in readme or INSTALL[major] in readme, INSTALL[major]
    assert not any("dali" in d for d in pyproject()["project"]["dependencies"]), "DALI's build is the extras' choice"


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
    assert not wrong, (f"(pinned, installed) {wrong}: reinstall with pip install -c {STACK} -e '.[test,cuda13]', or "
                       f"rerun docker/pin-stack.sh if pyproject.toml changed")


@pytest.mark.parametrize("major", sorted(STACKS))
def test_dockerfile_installs_exactly_the_stack(major) -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    # the build argument STACK picks the stack; CI's is the default
    assert re.search(rf"^ARG STACK={re.escape(STACK)}$", text, re.MULTILINE)
    written(major)
    dockerfile = with_stack(text, STACKS[major])
    assert stack_problems(dockerfile, stack_pins(major), STACKS[major]) == []
    # the stack file is in the image before it is installed from
    copy = re.search(rf"^COPY\s+{re.escape(STACKS[major])}\s", dockerfile, re.MULTILINE)
    install = re.search(rf'-r "?{re.escape(STACKS[major])}', dockerfile)
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


@pytest.mark.parametrize("major", sorted(STACKS))
def test_dockerfile_states_the_driver_each_stacks_cuda_needs(major) -> None:
    # The header names each stack file with the driver its CUDA major needs.
    header = (ROOT / "docker" / "Dockerfile").read_text().split("\nFROM ")[0]
    said = re.search(rf"{re.escape(STACKS[major])}[^\n]*\n(#[^\n]*\n)*?#[^\n]*driver >= (\d+)", header)
    assert said and int(said.group(2)) == MIN_DRIVER[major]


def test_ci_installs_under_the_stack_and_runs_the_readme_test_command() -> None:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert f'pip install -c {STACK} -e ".[test,cuda13]" && python -m pytest -q' in lines
    assert any(f"-c {STACK}" in line and line.rstrip().endswith(" pip") for line in lines), \
        "CI's pip is not the pinned one"


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    sources = []
    for line in with_stack((ROOT / "docker" / "Dockerfile").read_text(), STACK).splitlines():
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
