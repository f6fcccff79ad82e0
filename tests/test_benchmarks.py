"""The benchmark scripts on the CPU with tiny sizes: rows, skipped rows, ratios, valid JSON, CLI errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from benchmarks import augment_throughput as aug
from dali_pipes import create_loader
from benchmarks import train_throughput as tt
from dali_pipes import ConfigError

CUDA = torch.cuda.is_available()
# torchvision_workers 0: the torchvision-fed row augments in the process (a worker start takes 10-20 s here)
TINY_TRAIN = {"models": ["resnet20"], "batch_size": 4, "steps": 1, "warmup_steps": 1, "repeats": 2,
              "num_samples": 8, "augment": "none", "torchvision_workers": 0}
CPU_ROWS = ["fp32", "fp32 +cl", "bf16", "bf16 +cl", "bf16 +cl +mix", "bf16 +cl +mix, DALI loader",
            "bf16 +cl +mix, torchvision loader"]


def walk_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from walk_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk_numbers(v)
    elif isinstance(obj, float):
        yield obj


def assert_csv_matches_json_rows(json_path: Path) -> None:
    """The CSV beside a JSON report holds its rows: one line each, a column per field (nested fields as
    ``parent.key``), the same values."""
    import csv

    rows = json.loads(json_path.read_text())["results"]
    with open(json_path.with_suffix(".csv"), newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(rows) > 0
    for row, line in zip(rows, lines):
        cells = {}
        for key, value in row.items():
            for name, v in (value.items() if isinstance(value, dict) else [(None, value)]):
                cells[f"{key}.{name}" if name else key] = v
        assert set(cells) <= set(line) and all(line[k] == "" for k in set(line) - set(cells)), set(cells) ^ set(line)
        for name, v in cells.items():
            if isinstance(v, list) and any(isinstance(x, dict) for x in v):
                assert json.loads(line[name]) == v, name
            elif isinstance(v, list):
                assert [float(x) for x in line[name].split()] == [float(x) for x in v if x is not None], name
            elif isinstance(v, float):
                assert float(line[name]) == pytest.approx(v, rel=1e-12), name
            else:
                assert line[name] == ("" if v is None else str(v)), name


@pytest.fixture(scope="module")
def train_report() -> dict:
    # 4-sample batches, 2 per epoch: warm-up + repeats cross an epoch boundary of the DALI-fed row.
    return tt.measure(device="all", **TINY_TRAIN)


def test_train_rows_cover_the_grid_and_are_finite(train_report) -> None:
    cpu = [r for r in train_report["results"] if r["device"] == "cpu"]
    assert [r["row"] for r in cpu] == CPU_ROWS
    for r in train_report["results"]:
        assert r["median_images_per_s"] > 0 and math.isfinite(r["median_images_per_s"]), r
        assert r["min"] <= r["median_images_per_s"] <= r["max"] and len(r["runs"]) == 2
        assert r["median_step_ms"] > 0 and r["memory"]["host_rss_peak_mib"] > 0
    by_row = {r["row"]: r for r in cpu}
    assert by_row["bf16 +cl +mix, DALI loader"]["feed"] == "dali" and by_row["bf16"]["feed"] == "synthetic"
    assert by_row["bf16 +cl +mix, torchvision loader"]["feed"] == "torchvision"
    # the loader rows state their threads (DALI, by training's rule) and workers (torchvision, as asked); rows
    # without a loader state none
    from dali_pipes.loader import default_num_threads

    for r in train_report["results"]:
        threads = default_num_threads(torch.device(r["device"]))
        assert r["dali_threads"] == (threads if r["feed"] == "dali" else None), r["row"]
        assert r["torchvision_workers"] == (0 if r["feed"] == "torchvision" else None), r["row"]
    # bf16 autocast keeps (about) half the activation bytes of fp32
    assert by_row["bf16"]["memory"]["saved_for_backward_mib"] < 0.8 * by_row["fp32"]["memory"]["saved_for_backward_mib"]
    assert json.loads(json.dumps(train_report, allow_nan=False)) == train_report
    assert all(math.isfinite(x) for x in walk_numbers(train_report))


def test_train_ratios_are_the_ratios_of_the_medians(train_report) -> None:
    med = {(r["device"], r["model"], r["row"]): r["median_images_per_s"] for r in train_report["results"]}
    kinds = {q["kind"] for q in train_report["ratios"] if q["device"] == "cpu"}
    assert kinds == {"amp_vs_fp32", "channels_last", "mixing", "loader"}
    for q in train_report["ratios"]:
        expected = med[(q["device"], q["model"], q["row"])] / med[(q["device"], q["model"], q["vs"])]
        assert q["speedup"] == pytest.approx(expected)
        if q["kind"] == "loader":
            assert q["loader_overhead_pct"] == pytest.approx(100 * (1 - expected)) and q["memory_ratio"] is None
        else:
            assert q["memory_ratio"] > 0
    amp = [q for q in train_report["ratios"] if q["kind"] == "amp_vs_fp32" and q["device"] == "cpu"]
    assert {(q["row"], q["vs"]) for q in amp} == {("bf16", "fp32"), ("bf16 +cl", "fp32 +cl")}
    loaders = {q["feed"]: q for q in train_report["ratios"] if q["kind"] == "loader" and q["device"] == "cpu"}
    assert set(loaders) == {"dali", "torchvision"} and loaders["torchvision"]["vs"] == "bf16 +cl +mix"
    assert "torchvision loader, plain torchvision v2" in tt.format_table(train_report)


def test_train_skipped_rows_have_reasons(train_report) -> None:
    skipped = train_report["skipped"]
    assert {s["row"] for s in skipped if s["device"] == "cpu"} == {"fp16", "fp16 +cl"}
    assert all(s["reason"] for s in skipped)
    cuda_skipped = [s for s in skipped if s["device"] == "cuda"]
    if CUDA:
        assert not cuda_skipped
    else:
        assert cuda_skipped and {s["reason"] for s in cuda_skipped} == {aug.NO_CUDA}
        assert not any(r["device"] == "cuda" for r in train_report["results"])
    assert any("compile" in n for n in train_report["notes"])  # not requested: said so
    text = tt.format_table(train_report)
    assert "skipped cpu resnet20 fp16, fp16 +cl: fp16 needs CUDA" in text and "loader overhead" in text


def test_train_bad_arguments_raise_before_measuring() -> None:
    with pytest.raises(ConfigError, match="--models"):
        tt.measure(device="cpu", models=["resnet1000"])
    with pytest.raises(ConfigError, match="--augment"):
        tt.measure(device="cpu", augment="bogus")
    with pytest.raises(ConfigError, match="--steps"):
        tt.measure(device="cpu", steps=0)
    with pytest.raises(ConfigError, match="feeds='files' is invalid"):
        tt.measure(device="cpu", feeds=("synthetic", "files"))


def test_train_rows_of_feeds_not_asked_for_are_skipped_with_the_reason() -> None:
    # the GPU check leaves out the torchvision-fed row, whose workers' start alone overran its budget
    report = tt.measure(device="cpu", **{**TINY_TRAIN, "feeds": ("synthetic",)})
    assert {r["feed"] for r in report["results"]} == {"synthetic"}, report["results"]
    skipped = [s for s in report["skipped"] if "feed was not asked for" in s["reason"]]
    assert sorted(s["row"] for s in skipped) == ["bf16 +cl +mix, DALI loader", "bf16 +cl +mix, torchvision loader"]


def test_train_cli_writes_json_and_plot(tmp_path, train_report) -> None:
    # The CLI's own work (options -> measure, table, JSON, plot) on the report measured above: measuring again
    # would double this file's run time.
    calls = []

    def measured(**kwargs):
        calls.append(kwargs)
        return json.loads(json.dumps(train_report))

    out, png = tmp_path / "train.json", tmp_path / "train.png"
    result = CliRunner().invoke(tt.command(measured), ["--device", "cpu", "--models", "resnet20", "--batch-size", "4", "--steps",
                                          "1", "--warmup-steps", "1", "--repeats", "2", "--num-samples", "8",
                                          "--augment", "none", "--torchvision-workers", "0", "--json", str(out),
                                          "--plot", str(png), "-q"])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and callable(calls[0].pop("on_update"))  # --json: rewritten as groups finish
    assert calls == [{"device": "cpu", "compile": False, "progress": None, **TINY_TRAIN}]
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [r["row"] for r in report["results"] if r["device"] == "cpu"] == CPU_ROWS
    assert report["wall_time_s"] >= 0 and png.stat().st_size > 0
    assert "training throughput benchmark" in result.output and "loader overhead" in result.output
    assert_csv_matches_json_rows(out)


@pytest.mark.parametrize("args, option", [(["--models", "resnet20,bogus"], "--models"),
                                          (["--augment", "bogus"], "--augment"),
                                          (["--device", "tpu"], "--device")])
def test_train_cli_bad_option_exits_2_naming_it(args, option) -> None:
    result = CliRunner().invoke(tt.main, args)
    assert result.exit_code == 2 and option in result.output, result.output


def test_train_cli_reports_dali_train_errors_with_exit_2() -> None:
    def fail(**kwargs):
        raise ConfigError("no data")

    result = CliRunner().invoke(tt.command(fail), ["--device", "cpu"])
    assert result.exit_code == 2 and "error: no data" in result.output


def test_augment_measure_rows_ratios_and_json() -> None:
    report = aug.measure(["standard"], device="all", workers=[0], tuned_workers=[0], batch_sizes=[16], repeats=2,
                         num_samples=32)
    rows = [r["row"] for r in report["results"]]
    assert rows[:3] == ["torchvision-ref w=0", "torchvision-tuned", "dali-cpu"]
    assert {"torch-batched-cpu", "kornia-cpu"} <= set(rows) and len(rows) == (8 if CUDA else 5)
    for r in report["results"]:
        assert r["median_images_per_s"] > 0 and math.isfinite(r["median_images_per_s"])
        assert r["min"] <= r["median_images_per_s"] <= r["max"]
        assert r["spread"] == pytest.approx(r["max"] / r["min"]) and r["spread_warning"] == (r["spread"] > 1.5)
    med = {r["row"]: r["median_images_per_s"] for r in report["results"]}
    for r in report["results"]:
        assert r["ratio_vs_reference"] == pytest.approx(r["median_images_per_s"] / med["torchvision-ref w=0"])
        assert r["ratio_vs_tuned_torchvision"] == pytest.approx(r["median_images_per_s"] / med["torchvision-tuned"])
    # each DALI row's two ratios side by side: over the tuned plain pipeline, and over the reference
    (q,) = [q for q in report["torchvision_ratios"] if q["row"] == "dali-cpu"]
    assert q["vs_tuned"] == pytest.approx(med["dali-cpu"] / med["torchvision-tuned"])
    assert q["vs_reference"] == pytest.approx(med["dali-cpu"] / med["torchvision-ref w=0"])
    assert q["reference_row"] == "torchvision-ref w=0" and q["tuned_setting"].startswith("0 workers")
    (tuned,) = [r for r in report["results"] if r["row"] == "torchvision-tuned"]
    assert tuned["backend"] == "torchvision-tuned" and tuned["workers_or_threads"] == 0
    assert [t["workers"] for t in tuned["tuning"]] == [0] and tuned["setting"] == q["tuned_setting"]
    assert len(report["warnings"]) == sum(r["spread_warning"] for r in report["results"])
    text = aug.format_table(report)
    assert f"standard batch 16 dali-cpu: {q['vs_tuned']:.2f}x the tuned torchvision pipeline" in text
    assert f"; {q['vs_reference']:.2f}x the reference (torchvision-ref w=0)" in text
    if not CUDA:
        skipped = {s["row"]: s["reason"] for s in report["skipped"]}
        assert skipped["dali-gpu"] == aug.NO_CUDA and skipped["torch-batched-cuda"] == aug.NO_CUDA
        assert skipped["kornia-cuda"] == aug.NO_CUDA
    json.dumps(report, allow_nan=False)


def test_augment_cli_json_and_bad_preset(tmp_path) -> None:
    out = tmp_path / "aug.json"
    result = CliRunner().invoke(aug.main, ["--device", "cpu", "--presets", "none", "--workers", "0", "--tuned-workers",
                                           "0", "--batch-sizes", "16", "--repeats", "1", "--num-samples", "32",
                                           "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [r["row"] for r in report["results"]] == ["torchvision-ref w=0", "torchvision-tuned", "dali-cpu",
                                                     "torch-batched-cpu", "kornia-cpu"]
    assert report["complete"] and all(r["status"] == "ok" for r in report["results"])
    assert f"csv: {out.with_suffix('.csv')}" in result.output
    assert_csv_matches_json_rows(out)
    result = CliRunner().invoke(aug.main, ["--presets", "standard,bogus"])
    assert result.exit_code == 2 and "--presets" in result.output, result.output


@pytest.mark.parametrize("args, option", [(["--batch-sizes", "128,x"], "--batch-sizes"),
                                          (["--batch-sizes", "0"], "--batch-sizes"),
                                          (["--dali-batch-size", "0"], "--dali-batch-size"),
                                          (["--workers", "-1"], "--workers")])
def test_augment_cli_bad_option_exits_2_naming_it(args, option) -> None:
    result = CliRunner().invoke(aug.main, args)
    assert result.exit_code == 2 and option in result.output, result.output


def test_augment_batched_torch_peer_applies_the_dali_graphs_parameters() -> None:
    from benchmarks.batched_torch import BatchedTorchLoader

    report = aug.measure(["weak+autoaugment"], device="cpu", workers=[], tuned_workers=[], batch_sizes=[16], repeats=1,
                         num_samples=32)
    assert [r["row"] for r in report["results"]] == ["dali-cpu"]  # the peer has no policies: skipped, with why
    assert any(s["row"] == "torch-batched-cpu" and "implements" in s["reason"] for s in report["skipped"])
    for preset, levels in (("weak", 1e-3), ("standard", 2.01)):  # standard: rounding of the colour matrices
        peer = BatchedTorchLoader(augment=preset, batch_size=16, device="cpu", num_samples=40)
        dali = create_loader("synthetic", split="train", batch_size=16, backend="dali", device="cpu", augment=preset,
                             num_samples=40, num_threads=1)
        peer.set_epoch(1), dali.set_epoch(1)
        a, b = torch.cat([x for x, _ in peer]), torch.cat([x for x, _ in dali])
        diff = (a - b).abs() * torch.tensor(peer.cfg.std).view(1, 3, 1, 1) * 255
        assert a.shape == (40, 3, 32, 32) and diff.max() <= levels, (preset, diff.max())


# ---------------------------------------------------------------------------- failing rows, partial JSON, batches
def test_augment_failing_row_is_reported_and_the_others_run(tmp_path) -> None:
    # num_threads=0 is refused by create_loader: the dali-cpu rows fail, torchvision's are measured.
    out = tmp_path / "aug.json"
    updates = []

    def update(report):
        updates.append(json.loads(aug.to_json(report)))
        aug_json(report)

    aug_json = aug.json_updater(str(out), aug.to_json)
    report = aug.measure(["none", "weak"], device="cpu", workers=[0], batch_sizes=[16], repeats=1, num_samples=32,
                         loader_options={"dali": {"num_threads": 0}}, on_update=update, peers=False)
    by_row = {(r["preset"], r["row"]): r for r in report["results"]}
    for preset in ("none", "weak"):
        failed, ok = by_row[(preset, "dali-cpu")], by_row[(preset, "torchvision-ref w=0")]
        assert failed["status"] == "failed" and failed["median_images_per_s"] is None
        assert failed["error"].startswith("ConfigError: ") and "num_threads" in failed["error"]
        assert "\n" not in failed["error"]
        assert ok["status"] == "ok" and ok["median_images_per_s"] > 0 and ok["error"] is None
    # the JSON was rewritten after each preset: the first write held the first preset only
    assert [len(u["results"]) for u in updates] == [2, 4] and not updates[0]["complete"]
    assert json.loads(out.read_text())["results"] == updates[-1]["results"]
    text = aug.format_table(report)
    assert "failed none batch 16 dali-cpu: ConfigError: num_threads" in text
    assert any(line.split()[2:4] == ["dali-cpu", "failed"] for line in text.splitlines() if line.startswith("none"))


class FakeLoader:
    """The loader surface the benchmark uses; batches of zeros, no augmentation."""

    def __init__(self, batch_size: int, num_samples: int):
        self.batch_size, self.shard_size = batch_size, num_samples

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        for start in range(0, self.shard_size, self.batch_size):
            yield torch.zeros(min(self.batch_size, self.shard_size - start), 1), None


def recording_factory(calls: list, stop_at_preset: str | None = None):
    def make_loader(**kwargs):
        if kwargs["augment"] == stop_at_preset:
            raise KeyboardInterrupt  # what killing the run looks like from inside measure
        calls.append(kwargs)
        return FakeLoader(kwargs["batch_size"], kwargs["num_samples"])

    return make_loader


def test_augment_batch_sizes_give_rows_per_size_and_side_by_side_ratios() -> None:
    calls: list[dict] = []
    report = aug.measure(["none"], device="cpu", workers=[0], batch_sizes=[8, 32], repeats=2, num_samples=64,
                         make_loader=recording_factory(calls), peers=False)
    assert [(r["batch_size"], r["row"]) for r in report["results"]] == [
        (8, "torchvision-ref w=0"), (8, "dali-cpu"), (32, "torchvision-ref w=0"), (32, "dali-cpu")]
    assert sorted({c["batch_size"] for c in calls}) == [8, 32]
    assert all("dali_batch_size" not in c for c in calls)  # not given: not passed
    med = {(r["row"], r["batch_size"]): r["median_images_per_s"] for r in report["results"]}
    for r in report["results"]:
        assert r["ratio_vs_largest_batch"] == pytest.approx(med[(r["row"], r["batch_size"])] / med[(r["row"], 32)])
    assert {(q["row"], q["small_batch"], q["large_batch"]) for q in report["batch_ratios"]} == {
        ("torchvision-ref w=0", 8, 32), ("dali-cpu", 8, 32)}
    for q in report["batch_ratios"]:
        assert q["ratio"] == pytest.approx(med[(q["row"], 8)] / med[(q["row"], 32)])
    text = aug.format_table(report)
    assert "vs batch 32" in text and "images/s at batch 8 / at batch 32:" in text


def test_augment_dali_batch_size_goes_to_dali_rows_only() -> None:
    calls: list[dict] = []
    report = aug.measure(["none"], device="cpu", workers=[0], tuned_workers=[], batch_sizes=[8], repeats=1,
                         num_samples=16, dali_batch_size=64, make_loader=recording_factory(calls))
    by_backend = {c["backend"]: c for c in calls}
    assert by_backend["dali"]["dali_batch_size"] == 64 and "dali_batch_size" not in by_backend["torchvision"]
    assert report["config"]["dali_batch_size"] == 64
    with pytest.raises(ConfigError, match="--dali-batch-size"):
        aug.measure(["none"], device="cpu", workers=[0], dali_batch_size=0, make_loader=recording_factory([]))
    with pytest.raises(ConfigError, match="--batch-sizes"):
        aug.measure(["none"], device="cpu", workers=[0], batch_sizes=[], make_loader=recording_factory([]))


def test_augment_killed_run_keeps_the_finished_presets_in_the_json(tmp_path) -> None:
    out = tmp_path / "aug.json"
    with pytest.raises(KeyboardInterrupt):
        aug.measure(["none", "weak"], device="cpu", workers=[0], batch_sizes=[8], repeats=1, num_samples=16,
                    make_loader=recording_factory([], stop_at_preset="weak"), peers=False,
                    on_update=aug.json_updater(str(out), aug.to_json))
    report = json.loads(out.read_text())
    assert not report["complete"] and {r["preset"] for r in report["results"]} == {"none"}
    assert len(report["results"]) == 2 and "incomplete" in aug.format_table(report)


def test_train_failing_row_is_reported_and_the_others_run(tmp_path) -> None:
    updates = []
    report = tt.measure(device="cpu", **TINY_TRAIN, overrides={"bf16": {"lr": -1.0}},
                        on_update=lambda r: updates.append(json.loads(tt.to_json(r))))
    by_row = {r["row"]: r for r in report["results"]}
    assert list(by_row) == CPU_ROWS
    bad = by_row["bf16"]
    assert bad["status"] == "failed" and "--lr" in bad["error"] and bad["median_images_per_s"] is None
    for label in CPU_ROWS:
        if label != "bf16":
            assert by_row[label]["status"] == "ok" and by_row[label]["median_images_per_s"] > 0, label
    pairs = {(q["row"], q["vs"]) for q in report["ratios"]}
    assert ("bf16", "fp32") not in pairs and ("bf16 +cl", "fp32 +cl") in pairs  # no ratio with a failed row
    assert len(updates) == 1 and updates[0]["results"] == json.loads(tt.to_json(report))["results"]
    assert not updates[0]["complete"] and report["complete"]
    text = tt.format_table(report)
    assert "failed cpu resnet20 bf16: ConfigError: --lr" in text
    with pytest.raises(ConfigError, match="bogus_field"):
        tt.measure(device="cpu", overrides={"bf16": {"bogus_field": 1}})


def test_write_text_atomic_replaces_whole_files(tmp_path) -> None:
    from benchmarks._outputs import one_line, write_text_atomic

    path = tmp_path / "r.json"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert one_line(ValueError("first\nsecond")) == "ValueError: first"
    assert one_line(RuntimeError("x" * 500), limit=50).endswith("...") and len(one_line(RuntimeError("x" * 500),
                                                                                      limit=50)) == 50


# ---------------------------------------------------------------------------------------------- gpu_check.py
GPU_CHECK = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def run_gpu_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # From another directory, with the repository root only where the script puts it: as on the device machine.
    return subprocess.run([sys.executable, str(GPU_CHECK), *args], capture_output=True, text=True, cwd="/",
                          env={**os.environ, **(env or {})}, timeout=900)


def test_gpu_check_without_cuda_says_so_in_one_line() -> None:
    result = run_gpu_check(env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and aug.NO_CUDA in result.stderr


@pytest.mark.parametrize("args, option", [(["--output", "/nonexistent-dir/x.json"], "--output"),
                                          (["--budget-s", "0"], "--budget-s"),
                                          (["--budget-s", "soon"], "--budget-s")])
def test_gpu_check_bad_option_exits_2_naming_it(args, option) -> None:
    result = run_gpu_check(*args)
    assert result.returncode == 2 and option in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow  # starts worker processes / runs every part of the plan: over 5 s here
def test_gpu_check_cpu_smoke_runs_the_whole_plan(tmp_path) -> None:
    out = tmp_path / "check.json"
    result = run_gpu_check("--cpu-smoke", "--output", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    parts = {p["name"]: p for p in report["parts"]}
    assert list(parts) == ["step", "pytest", "train", "augment", "dali_train"]
    assert report["complete"] and report["ok"]
    assert all(p["status"] == "ok" and p["error"] is None for p in parts.values()), parts
    counts = parts["pytest"]["result"]
    assert counts["failed"] == counts["errors"] == 0
    if not CUDA:  # the GPU tests were collected and skipped with their reason
        assert counts["skipped"] > 0 and counts["passed"] == 0
    augment = parts["augment"]["result"]
    # DALI's CPU graph and its peers on the same cores: the recipe as batched torch ops, and kornia's
    assert {(r["batch_size"], r["row"]) for r in augment["results"]} == {
        (b, row) for b in (8, 16) for row in ("dali-cpu", "torch-batched-cpu", "kornia-cpu")}
    assert augment["complete"] and {q["preset"] for q in augment["batch_ratios"]} == {"none", "weak"}
    train = parts["train"]["result"]
    assert [r["row"] for r in train["results"]] == CPU_ROWS and any(q["kind"] == "loader" for q in train["ratios"])
    step = {r["row"]: r for r in parts["step"]["result"]["results"]}
    assert step["step time per precision"]["status"] == "ok"
    assert set(step["step time per precision"]["median_step_ms"]) == {"fp16", "fp16 foreach", "bf16", "fp32"}
    assert step["fused SGD after a skipped first step"]["status"] == "ok"
    run = parts["dali_train"]["result"]
    assert run["summary"]["epochs_run"] == 2 and [m["epoch"] for m in run["metrics"]] == [1, 2]
    assert report["machine"]["dali"] and "nvidia.dali" not in report["environment"]["missing_modules"]
    lines = result.stdout.splitlines()
    assert any(line.startswith("pytest") and " ok " in line and "skipped" in line for line in lines)
    assert "json: " + str(out) in result.stdout


def test_gpu_check_parts_fail_or_time_out_alone(tmp_path) -> None:
    from benchmarks import gpu_check as gc

    leftover = tmp_path / "grandchild.pid"
    # The slow part starts a grandchild: stopping the part at its budget must end that one too.
    slow = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            "time.sleep(120)']); open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(120)")
    seen = []

    def read(res: dict) -> None:
        seen.append(res["name"])
        res["summary"] = f"read {res['name']}"

    parts = [gc.Part("boom", 60, [sys.executable, "-c", "raise ValueError('impossible option')"], read),
             gc.Part("slow", 3, [sys.executable, "-c", slow, str(leftover)], read),
             gc.Part("fine", 60, [sys.executable, "-c", "print('done')"], read)]
    out = tmp_path / "check.json"
    report = gc.run_check(parts, total_budget_s=300, output=out, mode="test", say=lambda _m: None,
                          log_dir=tmp_path)
    status = {p["name"]: (p["status"], p["error"]) for p in report["parts"]}
    assert status["boom"] == ("failed", "ValueError: impossible option")
    assert status["slow"][0] == "timeout" and "budget" in status["slow"][1]
    assert status["fine"] == ("ok", None) and "done" in report["parts"][2]["output_tail"]
    assert seen == ["boom", "slow", "fine"] and not report["ok"]
    assert json.loads(out.read_text())["parts"] == json.loads(json.dumps(report["parts"]))
    pid = int(leftover.read_text())
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
        assert "Z" in state, f"the timed-out part's child {pid} still runs: {state}"  # a zombie is already ended
    except FileNotFoundError:
        pass


def test_gpu_check_spent_budget_skips_the_remaining_parts(tmp_path) -> None:
    from benchmarks import gpu_check as gc

    parts = [gc.Part("only", 60, [sys.executable, "-c", "pass"], lambda res: None)]
    report = gc.run_check(parts, total_budget_s=gc.KILL_GRACE_S / 2, output=None, mode="test", say=lambda _m: None,
                          log_dir=tmp_path)
    assert report["parts"][0]["status"] == "skipped" and not report["ok"]


def test_gpu_check_full_plan_is_the_asked_check_within_8_minutes(tmp_path) -> None:
    from benchmarks import gpu_check as gc

    parts = {p.name: p for p in gc.plan(False, tmp_path)}
    # most informative first: the step (torch alone) before anything that needs DALI
    assert list(parts) == ["step", "pytest", "train", "augment", "dali_train"]
    # every budget, the kill grace of each, inside the total; the total inside 8 minutes
    assert sum(p.budget_s for p in parts.values()) + gc.KILL_GRACE_S <= gc.TOTAL_BUDGET_S <= 480
    assert parts["pytest"].command[-6:-4] == ["gpu", "tests"]
    full = gc.SIZES["full"]
    assert full["augment"]["presets"] == ["none", "weak", "standard", "weak+autoaugment"]
    assert full["augment"]["batch_sizes"] == [128, 1024] and full["augment"]["device"] == "all"
    assert full["train"]["models"] == ["resnet18"] and full["train"]["device"] == "cuda"
    assert full["step"]["model"] == "resnet18" and full["step"]["batch_size"] == 128 and "cpu" not in full["step"]
    assert parts["step"].command[-2:] == ["--part-output", str(tmp_path / "step.json")]
    command = parts["dali_train"].command
    assert command[1:3] == ["-m", "training"] and command[command.index("--epochs") + 1] == "2"
    assert command[command.index("--amp-dtype") + 1] == "float16" and command[command.index("--device") + 1] == "cuda"
    smoke = {p.name: p for p in gc.plan(True, tmp_path)}
    assert "--cpu-smoke" not in parts["augment"].command and "--cpu-smoke" in smoke["augment"].command


# ---------------------------------------------------------------------------------------------- training.harness
def test_harness_rotates_the_first_arm_and_a_failing_arm_fails_alone() -> None:
    from training.harness import Arm, interleaved, set_up

    order: list[tuple[int, str]] = []

    def measure(arm: Arm, r: int) -> float:
        order.append((r, arm.name))
        if (r, arm.name) == (1, "b"):
            raise ValueError("broken\nsecond line")
        return float(len(order))

    arms = [Arm("a"), Arm("b"), Arm("c")]
    interleaved(arms, 3, measure)
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"), (2, "a"), (2, "c")]
    assert [arm.runs for arm in arms] == [[1.0, 6.0, 7.0], [2.0], [3.0, 5.0, 8.0]]
    assert arms[1].error == "ValueError: broken" and arms[0].ok and arms[2].ok
    bad = [Arm("x"), Arm("y")]
    set_up(bad, lambda arm: 1 / 0 if arm.name == "x" else "built")
    assert bad[0].error == "ZeroDivisionError: division by zero" and bad[1].state == "built"
    with pytest.raises(ZeroDivisionError):
        set_up([Arm("x")], lambda arm: 1 / 0, keep_going=False)


def test_harness_stats_and_table() -> None:
    from training.harness import Stats, ratio, table

    s = Stats.of([3.0, 1.0, float("inf"), None])
    assert (s.median, s.min, s.max, s.runs) == (3.0, 1.0, None, [3.0, 1.0, None, None])
    assert Stats.of([]).median is None and ratio(3.0, 0.0) is None and ratio(3.0, 2.0) == 1.5
    assert table(["x", "value"], [["a", "1"], ["bb", "22"], ["bb", "3"]], align="<>", group=1) == [
        "x   value", "--  -----", "a       1", "", "bb     22", "bb      3"]
    assert table(["x"], [])[-1] == "(no rows measured)"


def test_augment_rows_use_trainings_thread_rule_and_peers_get_the_same_threads() -> None:
    from dali_pipes.loader import default_num_threads

    rows, _ = aug.plan_rows("all", [], None, cuda=True, cores=4)
    threads = {r["row"]: r["workers_or_threads"] for r in rows}
    assert threads == {"dali-cpu": default_num_threads(torch.device("cpu"), 4),
                       "dali-gpu": default_num_threads(torch.device("cuda"), 4),
                       "torch-batched-cpu": 4, "torch-batched-cuda": 3, "kornia-cpu": 4, "kornia-cuda": 3}
    rows, _ = aug.plan_rows("all", [], 2, cuda=True, cores=4)  # --dali-threads 2
    assert {r["workers_or_threads"] for r in rows} == {2}


def test_the_batched_peer_runs_on_its_threads_and_restores_torchs() -> None:
    from benchmarks.batched_torch import BatchedTorchLoader

    before, seen = torch.get_num_threads(), []
    peer = BatchedTorchLoader(augment="weak", batch_size=8, device="cpu", num_samples=16, num_threads=1)
    for _ in peer:
        seen.append(torch.get_num_threads())  # between batches: the caller's setting
    assert seen == [before, before] and torch.get_num_threads() == before
    report = aug.measure(["weak"], device="cpu", workers=[], tuned_workers=[], batch_sizes=[8], repeats=1,
                         num_samples=16,
                         dali_threads=1)
    assert report["config"]["threads"] == {"dali-cpu": 1, "torch-batched-cpu": 1, "kornia-cpu": 1}
    assert "dali-cpu 1, torch-batched-cpu 1, kornia-cpu 1" in aug.format_header(report)


@pytest.mark.parametrize("dataset", ["folder", "shards"])
def test_augment_files_rows_count_the_files_each_epoch_opens(dataset: str) -> None:
    # The same generated JPEGs read from the folder (a file per image) and from tar shards (a tar per shard):
    # the kernel's count of opens under the data folder, per timed epoch, for DALI and the torchvision workers.
    from benchmarks import open_count

    if not open_count.available():
        pytest.skip("inotify is not available on this machine")
    report = aug.measure_folder(["none"], num_images=24, image_shape=(64, 48), image_size=32, dataset=dataset,
                                shard_size=16 << 10, device="cpu", workers=[1], batch_sizes=[8], repeats=1)
    opened = {r["row"]: r["files_opened_per_epoch"] for r in report["results"]}
    assert set(opened) == {"torchvision-ref w=1", "dali-cpu"}
    if dataset == "folder":
        assert all(n >= 24 for n in opened.values()), opened  # every training image at least once
    else:
        shards = report["config"]["shards"]
        assert 1 < shards < 24 and all(n <= shards + 2 for n in opened.values()), (shards, opened)
    assert "files opened/epoch" in aug.format_table(report)


def test_the_kornia_peer_applies_the_recipe_in_the_loaders_contract() -> None:
    # kornia's batched augmentation of `standard` (a test dependency; optional for users): the loaders' batch
    # contract (normalised float NCHW, labels on the device), the split once per epoch, and the recipe applied
    # (its images differ from the un-augmented ones; their statistics are the batched peer's, which follows the
    # same recipe with the DALI graph's draws).
    from benchmarks.batched_torch import BatchedTorchLoader
    from benchmarks.kornia_peer import KorniaLoader

    kornia = KorniaLoader(augment="standard", batch_size=64, device="cpu", num_samples=256)
    plain = KorniaLoader(augment="none", batch_size=64, device="cpu", num_samples=256)
    batched = BatchedTorchLoader(augment="standard", batch_size=64, device="cpu", num_samples=256)
    (x, y), (x0, _), (xb, _) = (tuple(torch.cat(t) for t in zip(*loader)) for loader in (kornia, plain, batched))
    assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (256,)
    assert sorted(y.tolist()) == sorted(plain.labels.tolist())  # every sample once
    assert (x - x0).abs().mean() > 0.1  # augmented (the order is the same: same seed, same plan)
    assert abs(x.mean() - xb.mean()) < 0.1 and abs(x.std() - xb.std()) / xb.std() < 0.1
    with pytest.raises(ValueError, match="kornia peer implements"):
        KorniaLoader(augment="weak+autoaugment", batch_size=8, device="cpu", num_samples=16)


# ---------------------------------------------------------------------------------------------- the tuned torchvision row
def test_the_tuned_torchvision_row_draws_from_torchs_generator_without_reseeding_per_sample() -> None:
    # The reference re-seeds torch per sample under fork_rng: the caller's generator is untouched and an epoch
    # repeats exactly. The plain pipeline draws from torch's running generator, as a user's does: the generator
    # advances, the same epoch comes out differently, and only the generator's state decides its draws.
    from benchmarks.torchvision_peer import PlainTorchvisionLoader

    plain = PlainTorchvisionLoader(augment="standard", batch_size=16, device="cpu", num_samples=32, num_workers=0)
    reference = create_loader("synthetic", split="train", batch_size=16, backend="torchvision", device="cpu",
                              augment="standard", num_samples=32, num_workers=0)

    def epoch(loader) -> torch.Tensor:
        loader.set_epoch(1)
        return torch.cat([batch[0] for batch in loader])

    state = torch.get_rng_state()
    assert torch.equal(epoch(reference), epoch(reference)) and torch.equal(state, torch.get_rng_state())
    first, second = epoch(plain), epoch(plain)
    assert first.shape == (32, 3, 32, 32) and not torch.equal(first, second)
    assert not torch.equal(state, torch.get_rng_state())
    torch.manual_seed(5)
    first = epoch(plain)
    torch.manual_seed(5)
    assert torch.equal(first, epoch(plain))


def test_tuning_measures_every_worker_count_and_keeps_the_fastest() -> None:
    from benchmarks.torchvision_peer import tune

    class Built:
        def __init__(self, k: int):
            self.num_workers = k

    speeds = {0: 100.0, 1: 300.0, 2: 250.0}
    said = []
    loader, trials = tune(Built, [0, 1, 2], rate=lambda b: speeds[b.num_workers],
                          on_result=lambda k, ips: said.append(k))
    assert loader.num_workers == 1 and said == [0, 1, 2]
    assert trials == [{"workers": k, "images_per_s": v} for k, v in speeds.items()]
    with pytest.raises(ValueError, match="no worker counts"):
        tune(Built, [], rate=lambda b: 1.0)


# ---------------------------------------------------------------------------------------------- spreads, plots, defaults
def test_spread_warning_marks_rows_whose_repeats_spread_over_1_5x(train_report) -> None:
    from training.harness import spread_warnings

    rows = [{"row": "steady", "min": 100.0, "max": 150.0}, {"row": "noisy", "min": 47.0, "max": 280.0},
            {"row": "failed", "min": None, "max": None}]
    lines = spread_warnings(rows, lambda r: r["row"])
    assert [r["spread_warning"] for r in rows] == [False, True, False]
    assert rows[1]["spread"] == pytest.approx(280 / 47) and rows[2]["spread"] is None
    assert len(lines) == 1 and lines[0].startswith("warning: noisy: repeats spread 5.96x (max/min > 1.5)")
    # both scripts set the fields on every row and print the warnings with the table
    assert all("spread" in r and "spread_warning" in r for r in train_report["results"])
    report = json.loads(json.dumps(train_report))
    report["results"][0].update(min=47.0, max=280.0)
    report["warnings"] = spread_warnings(report["results"], lambda r: f"{r['device']} {r['model']} {r['row']}")
    assert "warning: cpu resnet20 fp32: repeats spread 5.96x" in tt.format_table(report)
    aug_report = aug.measure(["none"], device="cpu", workers=[0], batch_sizes=[8], repeats=1, num_samples=16,
                             make_loader=recording_factory([]), peers=False)
    aug_report["results"][1].update(min=47.0, max=280.0)
    aug_report["warnings"] = spread_warnings(aug_report["results"], lambda r: r["row"])
    text = aug.format_table(aug_report)
    assert "warning: dali-cpu: repeats spread 5.96x" in text and "5.96x!" in text


def test_plots_are_linear_and_start_at_zero(train_report) -> None:
    ax = tt.plot_figure(train_report).axes[0]
    assert ax.get_xscale() == "linear" and ax.get_xlim()[0] == 0
    report = aug.measure(["none", "weak"], device="cpu", workers=[0], batch_sizes=[8, 16], repeats=1,
                         num_samples=16, make_loader=recording_factory([]), peers=False)
    ax = aug.plot_figure(report).axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == pytest.approx(sorted(r["median_images_per_s"] for r in report["results"]))


def test_augment_defaults_are_the_short_grid_and_full_the_long_one() -> None:
    from dali_pipes.loader import cpu_count

    cores = cpu_count()
    assert aug._profile(False, None, None, None) == (["none", "standard", "weak+autoaugment"], 2048, [cores])
    assert aug._profile(True, None, None, None) == (list(aug.DEFAULT_PRESETS), 10_000, list(range(cores + 1)))
    assert aug._profile(True, ["weak"], 64, [1]) == (["weak"], 64, [1])  # what is given wins


def test_train_defaults_are_the_short_grid_and_full_the_long_one(train_report) -> None:
    calls = []

    def measured(**kwargs):
        calls.append(kwargs)
        return json.loads(json.dumps(train_report))

    for args in ([], ["--full"], ["--full", "--steps", "7"]):
        result = CliRunner().invoke(tt.command(measured), ["--device", "cpu", "-q", *args])
        assert result.exit_code == 0, result.output
    assert [(c["steps"], c["warmup_steps"]) for c in calls] == [(5, 2), (20, 5), (7, 5)]


# ----------------------------------------------------------------------------------------------- stage cost
def test_stage_cost_builds_standard_up_stage_by_stage_and_prices_each_stage(tmp_path) -> None:
    from benchmarks import stage_cost
    from dali_pipes import resolve_augment

    recipes = stage_cost.stage_recipes()
    assert resolve_augment(recipes[-1][1]) == resolve_augment("standard")  # the last stage is the preset itself
    assert resolve_augment(recipes[0][1]) == resolve_augment("none")
    out = tmp_path / "stages.json"
    result = CliRunner().invoke(stage_cost.main, ["--num-samples", "64", "--batch-size", "32", "--repeats", "2",
                                                  "--threads", "1", "-q", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["stage"], r["backend"]) for r in rows] == [(s, b) for s, _ in recipes for b in stage_cost.BACKENDS]
    for backend in stage_cost.BACKENDS:
        mine = [r for r in rows if r["backend"] == backend]
        assert all(r["min"] <= r["median"] <= r["max"] and len(r["runs"]) == 2 for r in mine)
        assert [r["us_per_image"] for r in mine] == pytest.approx([1e6 / r["max"] for r in mine])
        # the stage costs add up to the whole recipe's time per image
        assert sum(r["stage_us_per_image"] for r in mine) == pytest.approx(mine[-1]["us_per_image"])
    for stage in {r["stage"] for r in rows}:
        dali, peer = (next(r for r in rows if r["stage"] == stage and r["backend"] == b) for b in stage_cost.BACKENDS)
        assert dali["vs_torch"] == pytest.approx(dali["max"] / peer["max"])
    assert "+saturation,hue" in result.output and report["config"]["threads"] == 1
    assert_csv_matches_json_rows(out)


def test_stage_cost_bad_arguments_are_one_line_errors() -> None:
    from benchmarks import stage_cost

    with pytest.raises(ConfigError, match="--repeats"):
        stage_cost.measure(repeats=0)
    result = CliRunner().invoke(stage_cost.main, ["--device", "tpu"])
    assert result.exit_code == 2 and "--device" in result.output
