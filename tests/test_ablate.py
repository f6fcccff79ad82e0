"""`dali-ablate` on the CPU: a tiny two-arm study end to end (interrupted, resumed, rerun), reports read from the
runs' own files, built-in studies valid, bad input refused with one line."""

from __future__ import annotations

import csv
import itertools
import json
import math
import signal
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers import StopAfter

from dali_pipes import ConfigError
from training import ablate
from training import loop as run_mod
from training.outputs import read_metrics
from training.ablate import STUDIES, RunRecord, arm_configs, load_study, skip_reason, welch_t
from training.config import TrainConfig

TINY = ["--dataset", "synthetic", "--num-samples", "128", "--model", "resnet20", "--epochs", "1", "--batch-size", "64",
        "--num-threads", "2", "--augment", "weak"]
STUDY = "arms:\n  plain:\n    label_smoothing: 0.0\n  smooth:\n    label-smoothing: 0.2\n    lr: 5e-2\n"


def invoke(args: list[str], stop=None) -> tuple[int, str]:
    result = CliRunner().invoke(ablate.main, args, obj={"stop": stop} if stop is not None else None)
    return result.exit_code, result.output


def one_line_error(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text


def run_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(out.glob("*/seed*/*"))}


@pytest.fixture(scope="module")
def stopped_then_rerun(tmp_path_factory) -> dict:
    """A tiny two-arm, two-seed study stopped by SIGTERM in its first run after one batch, then the same command
    again (which resumes that run and starts the other three): the outputs of both calls, for the tests below."""
    root = tmp_path_factory.mktemp("ablate")
    study, out = root / "tiny.yaml", root / "study"
    study.write_text(STUDY)
    args = ["--study", str(study), "--seeds", "2", *TINY, "--output", str(out)]
    stopped = invoke(args, stop=StopAfter(1))
    first_files = {p.name for p in (out / "plain" / "seed0").iterdir()}
    rerun = invoke(args)
    dirs = {(arm, seed): out / arm / f"seed{seed}" for arm in ("plain", "smooth") for seed in (0, 1)}
    return {"study": study, "out": out, "args": args, "stopped": stopped, "first_files": first_files,
            "rerun": rerun, "dirs": dirs}


@pytest.mark.slow
def test_a_stopped_study_keeps_last_pth_and_says_to_rerun_in_one_line(stopped_then_rerun) -> None:
    code, text = stopped_then_rerun["stopped"]
    assert code == 128 + signal.SIGTERM, text
    assert "rerun the same dali-ablate command" in text and "Traceback" not in text
    assert "last.pth" in stopped_then_rerun["first_files"]
    assert "summary.json" not in stopped_then_rerun["first_files"]


@pytest.mark.slow
def test_the_rerun_resumes_the_stopped_run_and_starts_the_others(stopped_then_rerun) -> None:
    code, text = stopped_then_rerun["rerun"]
    assert code == 0, text
    assert "[plain seed 0] resuming" in text and "resuming epoch 1 at batch 2/2" in text
    for d in stopped_then_rerun["dirs"].values():
        assert {"config.yaml", "metrics.csv", "last.pth", "best.pth", "summary.json"} <= {p.name for p in d.iterdir()}
    saved = yaml.safe_load((stopped_then_rerun["dirs"]["smooth", 1] / "config.yaml").read_text())
    assert (saved["label_smoothing"], saved["lr"], saved["seed"]) == (0.2, 0.05, 1)


@pytest.mark.slow
def test_the_reports_are_read_from_the_runs_own_files(stopped_then_rerun) -> None:
    out, dirs = stopped_then_rerun["out"], stopped_then_rerun["dirs"]
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {(r["arm"], int(r["seed"])) for r in rows} == set(dirs)
    for r in rows:
        run_dir = dirs[r["arm"], int(r["seed"])]
        summary = json.loads((run_dir / "summary.json").read_text())
        metrics = read_metrics(run_dir / "metrics.csv")
        assert r["status"] == "done" and Path(r["run_dir"]) == run_dir
        assert float(r["final_val_acc"]) == summary["final_epoch_val_acc"]
        assert float(r["best_val_acc"]) == summary["best_val_acc"]
        assert float(r["final_train_loss"]) == metrics[-1]["train_loss"]
        assert float(r["mean_epoch_time_s"]) == metrics[-1]["epoch_time_s"]  # one epoch: its own figure
        assert float(r["peak_host_rss_mib"]) == metrics[-1]["host_rss_peak_mib"]
        assert r["peak_cuda_alloc_mib"] == "" and r["amp_dtype"] == "bfloat16"
    md = (out / "summary.md").read_text()
    assert "| plain | 2 |" in md and "| smooth | 2 |" in md and "baseline arm: **plain**" in md
    assert "label_smoothing=0.2, lr=0.05" in md
    for name in ("curves.png", "final_acc.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_finished_study_run_again_skips_every_run_and_rewrites_none(stopped_then_rerun) -> None:
    out = stopped_then_rerun["out"]
    before = run_files(out)
    code, text = invoke(stopped_then_rerun["args"])
    assert code == 0, text
    assert text.count("skipped: finished earlier") == 4 and "starting" not in text
    assert run_files(out) == before


@pytest.mark.slow
def test_a_run_without_its_summary_is_finished_from_its_checkpoints_alone(stopped_then_rerun) -> None:
    out, unfinished = stopped_then_rerun["out"], stopped_then_rerun["dirs"]["smooth", 0]
    before = run_files(out)
    (unfinished / "summary.json").unlink()
    code, text = invoke(stopped_then_rerun["args"])
    assert code == 0, text
    assert "[smooth seed 0] all epochs are in last.pth" in text and text.count("skipped: finished earlier") == 3
    assert (unfinished / "summary.json").is_file()
    after = run_files(out)
    assert {p: t for p, t in after.items() if unfinished not in p.parents} == \
        {p: t for p, t in before.items() if unfinished not in p.parents}


@pytest.mark.slow
def test_the_same_output_with_another_config_is_refused(stopped_then_rerun) -> None:
    out = stopped_then_rerun["out"]
    before = run_files(out)
    code, text = invoke(["--study", str(stopped_then_rerun["study"]), "--seeds", "2", *TINY, "--weight-decay",
                         "0.001", "--output", str(out)])
    assert code == 2 and one_line_error(text) and "holds a run with another config" in text, text
    assert run_files(out) == before  # not silently reused


def test_the_built_in_studies_are_valid_configs() -> None:
    base = TrainConfig(dataset="synthetic", model="resnet20")
    for name in STUDIES:
        study = load_study(name, base)
        configs = arm_configs(study, base)
        assert len(configs) >= 3 and all(isinstance(c, TrainConfig) for c in configs.values())
        for arm, cfg in configs.items():
            assert TrainConfig.from_dict(cfg.to_dict()) == cfg
            assert all(getattr(cfg, k) == v for k, v in study.arms[arm].items())
    arms = arm_configs(load_study("augment-strength", base), base)
    assert [c.augment for c in arms.values()] == ["none", "weak", "strong"]
    arms = arm_configs(load_study("label-smoothing", base), base)
    assert [c.label_smoothing for c in arms.values()] == [0.0, 0.05, 0.1, 0.2]
    arms = arm_configs(load_study("mixing", base), base)
    assert {a: (c.mixup_alpha, c.cutmix_alpha) for a, c in arms.items()} == {
        "none": (0.0, 0.0), "mixup": (0.2, 0.0), "cutmix": (0.0, 1.0), "both": (0.2, 1.0)}
    precision = load_study("precision", base)
    arms = arm_configs(precision, base)
    assert {a: (c.amp, c.amp_dtype if c.amp else None) for a, c in arms.items()} == {
        "fp32": (False, None), "fp16": (True, "float16"), "bf16": (True, "bfloat16")}
    assert "CUDA" in skip_reason(precision.arms["fp16"], arms["fp16"], "cpu")
    assert skip_reason(precision.arms["fp16"], arms["fp16"], "cuda") is None
    assert skip_reason(precision.arms["bf16"], arms["bf16"], "cpu") is None

    # the recipe: a plain baseline, one technique added per arm, the last arm is dali-train's full recipe
    recipe = arm_configs(load_study("recipe", base), base)
    assert list(recipe) == ["baseline", "+autoaugment", "+mixup-cutmix", "+label-smoothing", "+drop-path", "+amp"]
    b = recipe["baseline"]
    assert (b.augment, b.mixup_alpha, b.cutmix_alpha, b.label_smoothing, b.drop_path, b.amp) == \
        ("weak", 0.0, 0.0, 0.0, 0.0, False)
    steps = list(recipe.values())
    for prev, cur in itertools.pairwise(steps):
        changed = {k for k, v in cur.to_dict().items() if prev.to_dict()[k] != v}
        assert 1 <= len(changed) <= 2, changed  # one technique (Mixup + CutMix count as one)
    assert recipe["+amp"] == base


def test_custom_study_file_errors_are_one_line(tmp_path) -> None:
    def write(text: str) -> str:
        path = tmp_path / f"s{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(text)
        return str(path)

    out = str(tmp_path / "out")
    cases = {
        "unknown option(s) colour, lr_max": write("arms:\n  a: {}\n  b: {lr_max: 0.2, colour: red}\n"),
        "not valid YAML": write("arms: [unclosed\n"),
        "expected a mapping with 'arms": write("- a\n- b\n"),
        "--label-smoothing=2": write("arms:\n  a: {}\n  b: {label_smoothing: 2}\n"),
        "set by dali-ablate": write("arms:\n  a: {seed: 3}\n"),
        "cannot read it": str(tmp_path / "missing.yaml"),
    }
    for expected, study in cases.items():
        code, text = invoke(["--study", study, *TINY, "--output", out])
        assert code == 2 and one_line_error(text) and expected in text, (expected, text)
    for args, expected in ((["--study", "no-such-study"], "unknown study"),
                           (["--study", "recipe", "--seeds", "0"], "--seeds=0"),
                           (["--study", "recipe"], "--output DIR is required"),
                           ([], "--study is required")):
        code, text = invoke([*args, *TINY] + (["--output", out] if "--output DIR" not in expected else []))
        assert code == 2 and one_line_error(text) and expected in text, (args, text)
    assert not Path(out).exists()  # nothing ran, nothing was created


def test_summary_statistics_and_single_seed_na(tmp_path) -> None:
    assert welch_t([1.0, 2.0], [1.0, 2.0]) == 0.0
    # means 3 and 1, variances 1 and 1, n 3 and 3: t = 2 / sqrt(2/3)
    assert welch_t([2.0, 3.0, 4.0], [0.0, 1.0, 2.0]) == pytest.approx(2 / math.sqrt(2 / 3))
    assert welch_t([0.5], [0.4, 0.6]) is None
    assert welch_t([0.5, 0.5], [0.4, 0.4]) == math.inf

    base = TrainConfig(dataset="synthetic")
    study = ablate.Study("s", "built-in", {"a": {}, "b": {"lr": 0.2}, "c": {"amp": True, "amp_dtype": "float16"}})

    def record(arm: str, acc: float) -> RunRecord:
        summary = {"final_epoch_val_acc": acc, "best_val_acc": acc, "best_epoch": 1, "epochs_run": 1,
                   "amp_dtype": None, "device": "cpu", "device_name": "cpu"}
        row = {"epoch": 1.0, "train_loss": 1.0, "val_acc": acc, "epoch_time_s": 2.0, "host_rss_peak_mib": 100.0,
               "max_mem_allocated_mib": math.nan}
        return RunRecord(arm, 0, tmp_path / arm, "done", "", summary, [row])

    records = [record("a", 0.5), record("b", 0.75), RunRecord("c", 0, tmp_path / "c", "skipped", "no CUDA here")]
    ablate.write_summary(study, base, 1, records, tmp_path / "summary.md")
    md = (tmp_path / "summary.md").read_text()
    assert "| a | 1 | 50.00 (1 run) |" in md
    assert "| b | 1 | 75.00 (1 run) | 75.00 (1 run) | +25.00 | n/a | n/a |" in md
    assert "| c | 0 | skipped |" in md and "c (skipped, seed(s) 0): no CUDA here" in md
    ablate.write_results(records, tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["status"], r["final_val_acc"], r["amp_dtype"]) for r in rows] == [
        ("a", "done", "0.5", "float32"), ("b", "done", "0.75", "float32"), ("c", "skipped", "", "")]
    ablate.write_plots(study, records, tmp_path)
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "final_acc.png").is_file()


def test_arm_errors_name_the_arm() -> None:
    study = ablate.Study("s", "x.yaml", {"ok": {}, "bad": {"augment": "sparkly"}})
    with pytest.raises(ConfigError, match="arm 'bad'"):
        arm_configs(study, TrainConfig())


def test_an_arm_may_give_an_augment_mapping_like_config_does(tmp_path) -> None:
    study_file = tmp_path / "recipes.yaml"
    study_file.write_text("arms:\n  plain: {}\n  softer:\n    augment:\n      preset: standard\n      erase_p: 0.25\n")
    study = load_study(str(study_file), TrainConfig())
    assert study.arms["softer"]["augment"] == {"preset": "standard", "erase_p": 0.25}
    configs = arm_configs(study, TrainConfig())
    recipe = configs["softer"].augment
    assert isinstance(recipe, dict) and recipe["erase_p"] == 0.25 and recipe["brightness"] == 0.2  # resolved
    assert configs["plain"].augment == TrainConfig().augment
