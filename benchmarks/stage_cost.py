"""Where the time of an augmentation goes: the recipe built up one stage at a time, DALI against batched torch.

    python benchmarks/stage_cost.py --device cpu --json stages.json

The ``standard`` recipe is measured as six cumulative stages (normalize; + pad-crop; + flip; + brightness and
contrast; + saturation and hue; + erasing, which is ``standard`` itself), each stage as two rows on the same device
and the same number of threads: the DALI loader (``dali-<device>``, training's loader and graph) and the
batched-torch peer (``torch-batched-<device>``, benchmarks/batched_torch.py). Every row runs in interleaved repeats
(training.harness), one untimed epoch first; the table gives each row's median images/s, its time per image, what
the stage added to that time (the stage's own cost: time per image minus the previous stage's; both times of the
best repeat, the least disturbed on a shared machine), and DALI / torch for the stage. It answers which operators
decide the comparison of benchmarks/augment_throughput.py, whose ``standard`` row is the last stage here.

Defaults (batch 1024, 16,384 images, 5 repeats) take about a minute on 2 cores.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import click  # noqa: E402
import torch  # noqa: E402

from benchmarks._outputs import _check_out_path, write_outputs  # noqa: E402
from benchmarks.augment_throughput import PEER, _build, _run_epochs  # noqa: E402
from dali_pipes import DaliTrainError, create_loader  # noqa: E402
from dali_pipes.checks import check_choice, check_int  # noqa: E402
from dali_pipes.loader import default_num_threads  # noqa: E402
from training.atomic import to_json  # noqa: E402
from training.harness import Arm, Stats, interleaved, machine_lines, ratio, set_up, spread_warnings, table  # noqa: E402
from training.machine import machine_info  # noqa: E402

# The stages: each adds its fields to the ones before; the last is the `standard` preset (a test holds them equal).
STAGES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("normalize", {}),
    ("+crop", {"crop_padding": 4}),
    ("+flip", {"flip_p": 0.5}),
    ("+brightness,contrast", {"brightness": 0.2, "contrast": 0.2}),
    ("+saturation,hue", {"saturation": 0.2, "hue": 0.1}),
    ("+erasing", {"erase_p": 0.5}),
)
BACKENDS = ("dali", PEER)  # the DALI loader, and the batched-torch peer (benchmarks/batched_torch.py)


def stage_recipes() -> list[tuple[str, dict[str, Any]]]:
    """(stage, recipe mapping) in order, each recipe holding every field of the stages up to it."""
    out, fields = [], {}
    for name, added in STAGES:
        fields = {**fields, **added}
        out.append((name, {"preset": "none", **fields}))
    return out


def measure(*, device: str = "cpu", batch_size: int = 1024, num_samples: int = 16384, repeats: int = 5,
            threads: int | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The report {"machine", "config", "results", "warnings"}: one result per (stage, backend) with ``median``,
    ``min``, ``max`` (images/s over the repeats), ``us_per_image`` (of the best repeat: the least disturbed on a
    shared machine), ``stage_us_per_image`` (what the stage added to it) and, on the DALI rows, ``vs_torch`` (DALI's
    best images/s / torch's, the stage's whole recipe) and ``stage_vs_torch`` (DALI's stage cost / torch's).
    Raises DaliTrainError for bad arguments before anything is measured."""
    check_choice("--device", device, ("cpu", "cuda"))
    for name, value in (("--batch-size", batch_size), ("--num-samples", num_samples), ("--repeats", repeats)):
        check_int(name, value, 1)
    if device == "cuda" and not torch.cuda.is_available():
        raise DaliTrainError("--device cuda: no CUDA device visible; use --device cpu")
    threads = check_int("--threads", threads, 1) if threads is not None else default_num_threads(torch.device(device))
    say = progress or (lambda _m: None)
    cuda = device == "cuda"
    arms = [Arm(f"{name} {backend}", spec={"stage": name, "backend": backend, "recipe": recipe})
            for name, recipe in stage_recipes() for backend in BACKENDS]

    def setup(arm: Arm):
        say(f"{arm.name}: build + warm-up epoch")
        # built as augment_throughput builds its rows of the same backends
        row = {"backend": arm.spec["backend"], "device": device, "workers_or_threads": threads}
        loader = _build(row, arm.spec["recipe"], batch_size, num_samples, {}, create_loader)
        _run_epochs(loader, [0], cuda)
        return loader

    def timed(arm: Arm, r: int) -> float:
        images, seconds = _run_epochs(arm.state, [r + 1], cuda)
        return images / seconds

    set_up(arms, setup, keep_going=False)
    interleaved(arms, repeats, timed, keep_going=False,
                on_result=lambda arm, r, ips: say(f"repeat {r + 1}/{repeats} {arm.name}: {ips:,.0f} img/s"))
    results = []
    for arm in arms:
        s = Stats.of(arm.runs)
        results.append({"stage": arm.spec["stage"], "backend": arm.spec["backend"], "row": arm.name,
                        "median": s.median, "min": s.min, "max": s.max, "runs": s.runs,
                        "us_per_image": 1e6 / s.max if s.max else None})
    _stage_costs(results)
    report = {"machine": machine_info(),
              "config": {"device": device, "batch_size": batch_size, "num_samples": num_samples, "repeats": repeats,
                         "threads": threads, "stages": [{"stage": n, "recipe": r} for n, r in stage_recipes()]},
              "results": results}
    report["warnings"] = spread_warnings(results, lambda r: r["row"])
    return report


def _stage_costs(results: list[dict]) -> None:
    """Adds each row's stage cost (its time per image minus its backend's previous stage's) and DALI's ratios."""
    previous: dict[str, float] = {}
    by_stage: dict[str, dict[str, dict]] = {}
    for r in results:
        us = r["us_per_image"]
        r["stage_us_per_image"] = us - previous[r["backend"]] if r["backend"] in previous and us else us
        previous[r["backend"]] = us
        by_stage.setdefault(r["stage"], {})[r["backend"]] = r
    for rows in by_stage.values():
        dali, peer = rows.get("dali"), rows.get(PEER)
        if dali and peer:
            dali["vs_torch"] = ratio(dali["max"], peer["max"])
            dali["stage_vs_torch"] = ratio(dali["stage_us_per_image"], peer["stage_us_per_image"])


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_report(report: dict[str, Any]) -> str:
    c = report["config"]
    head = ["stage cost benchmark (cumulative stages of 'standard')", *machine_lines(report["machine"]),
            (f"  config      synthetic train split, {c['num_samples']} samples, batch {c['batch_size']}, "
             f"{c['repeats']} repeat(s) after 1 warm-up epoch, device {c['device']}, {c['threads']} threads "
             "(DALI threads; torch intra-op threads for the peer)"), ""]
    body = [[r["stage"], r["backend"], _num(r["median"], ",.0f"),
             f"{_num(r['min'], ',.0f')}..{_num(r['max'], ',.0f')}", _num(r["us_per_image"], ".2f"),
             _num(r["stage_us_per_image"], "+.2f"), _num(r.get("vs_torch"), ".2f") + ("x" if r.get("vs_torch") else ""),
             _num(r.get("stage_vs_torch"), ".1f") + ("x" if r.get("stage_vs_torch") else "")]
            for r in report["results"]]
    lines = table(["stage", "backend", "median img/s", "min..max", "best us/img", "stage us/img", "dali/torch",
                   "stage cost dali/torch"], body, align="<<>>>>>>", group=1)
    return "\n".join(head + lines + report["warnings"])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=1024, show_default=True,
              help="Training batch (the DALI loader chooses its own graph batch from it, as in training).")
@click.option("--num-samples", type=click.IntRange(1), default=16384, show_default=True,
              help="Size of the synthetic split (one epoch).")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None,
              help="DALI threads and the peer's torch threads [default: training's rule].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, callback=_check_out_path,
              help="Write the report as JSON here, and its rows as CSV beside it (same name, .csv).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def main(device: str, batch_size: int, num_samples: int, repeats: int, threads: int | None, json_path: str | None,
         quiet: bool) -> None:
    """Time the 'standard' recipe stage by stage, DALI against batched torch, on one device."""
    try:
        report = measure(device=device, batch_size=batch_size, num_samples=num_samples, repeats=repeats,
                         threads=threads, progress=None if quiet else lambda m: click.echo(m, err=True))
    except DaliTrainError as e:
        raise click.UsageError(str(e)) from None
    click.echo(format_report(report))
    write_outputs(report, json_path=json_path, plot_path=None, to_json=to_json, figure=lambda r: None)


if __name__ == "__main__":
    main()
