"""The benchmark scripts on the CPU with tiny sizes: rows, skipped rows, ratios, valid JSON, CLI errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from benchmarks import augment_throughput as aug
from benchmarks import train_throughput as tt
from dali_pipes import ConfigError

CUDA = torch.cuda.is_available()
TINY_TRAIN = {"models": ["resnet20"], "batch_size": 4, "steps": 1, "warmup_steps": 1, "repeats": 2,
              "num_samples": 8, "augment": "none"}
CPU_ROWS = ["fp32", "fp32 +cl", "bf16", "bf16 +cl", "bf16 +cl +mix", "bf16 +cl +mix, DALI loader"]


def walk_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from walk_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk_numbers(v)
    elif isinstance(obj, float):
        yield obj


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


def test_train_cli_writes_json_and_plot(tmp_path, monkeypatch, train_report) -> None:
    # The CLI's own work (options -> measure, table, JSON, plot) on the report measured above: measuring again
    # would double this file's run time.
    calls = []

    def measured(**kwargs):
        calls.append(kwargs)
        return json.loads(json.dumps(train_report))

    monkeypatch.setattr(tt, "measure", measured)
    out, png = tmp_path / "train.json", tmp_path / "train.png"
    result = CliRunner().invoke(tt.main, ["--device", "cpu", "--models", "resnet20", "--batch-size", "4", "--steps",
                                          "1", "--warmup-steps", "1", "--repeats", "2", "--num-samples", "8",
                                          "--augment", "none", "--json", str(out), "--plot", str(png), "-q"])
    assert result.exit_code == 0, result.output
    assert calls == [{"device": "cpu", "compile": False, "progress": None, **TINY_TRAIN}]
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [r["row"] for r in report["results"] if r["device"] == "cpu"] == CPU_ROWS
    assert report["wall_time_s"] >= 0 and png.stat().st_size > 0
    assert "training throughput benchmark" in result.output and "loader overhead" in result.output


@pytest.mark.parametrize("args, option", [(["--models", "resnet20,bogus"], "--models"),
                                          (["--augment", "bogus"], "--augment"),
                                          (["--device", "tpu"], "--device")])
def test_train_cli_bad_option_exits_2_naming_it(args, option) -> None:
    result = CliRunner().invoke(tt.main, args)
    assert result.exit_code == 2 and option in result.output, result.output


def test_train_cli_reports_dali_train_errors_with_exit_2(monkeypatch) -> None:
    def fail(**kwargs):
        raise ConfigError("no data")

    monkeypatch.setattr(tt, "measure", fail)
    result = CliRunner().invoke(tt.main, ["--device", "cpu"])
    assert result.exit_code == 2 and "error: no data" in result.output


def test_augment_measure_rows_ratios_and_json() -> None:
    report = aug.measure(["standard"], device="all", workers=[0], batch_size=16, repeats=2, num_samples=32)
    rows = [r["row"] for r in report["results"]]
    assert rows[:2] == ["torchvision w=0", "dali-cpu"] and len(rows) == (3 if CUDA else 2)
    for r in report["results"]:
        assert r["median_images_per_s"] > 0 and math.isfinite(r["median_images_per_s"])
        assert r["min"] <= r["median_images_per_s"] <= r["max"]
    tv = report["results"][0]["median_images_per_s"]
    for r in report["results"]:
        assert r["ratio_vs_best_torchvision"] == pytest.approx(r["median_images_per_s"] / tv)
    if not CUDA:
        assert report["skipped"] == [{"row": "dali-gpu", "reason": aug.NO_CUDA, "preset": "standard"}]
    json.dumps(report, allow_nan=False)


def test_augment_cli_json_and_bad_preset(tmp_path) -> None:
    out = tmp_path / "aug.json"
    result = CliRunner().invoke(aug.main, ["--device", "cpu", "--presets", "none", "--workers", "0", "--batch-size",
                                           "16", "--repeats", "1", "--num-samples", "32", "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [r["row"] for r in report["results"]] == ["torchvision w=0", "dali-cpu"]
    result = CliRunner().invoke(aug.main, ["--presets", "standard,bogus"])
    assert result.exit_code == 2 and "--presets" in result.output, result.output
