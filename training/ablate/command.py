"""`dali-ablate`: run every arm of an ablation study over several seeds, resumably, and report the differences.

Output directory (`--output DIR`):

    DIR/<arm>/seed<seed>/   one dali-train run directory per arm and seed (seed = --seed + k, k = 0..K-1)
    DIR/results.csv         one row per run; every figure is read from that run's summary.json / metrics.csv
    DIR/summary.md          mean ± std per arm, difference to the baseline arm (the first) with Welch's t
    DIR/curves.png          val accuracy per epoch per arm, mean over seeds (band: min..max)
    DIR/final_acc.png       final-epoch val accuracy per arm: every seed, and mean ± std

Rerunning the same command continues the study: each run directory is carried out as its RunDir's verdict says
(training.loop.rundir) — a finished run is skipped, one with a last.pth is resumed from it (a larger --epochs extends
it), one whose final evaluation is missing is completed, the others start. A run directory that holds a run with
another config (the same rule as dali-train --resume) is refused rather than reused.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from dali_pipes import ConfigError

from ..cli import _run_guarded, with_overrides
from ..config import TrainConfig
from ..options import GroupedCommand, option, train_options
from .report import write_plots, write_results, write_summary
from .runner import check_existing, run_study
from .studies import STUDIES, arm_configs, load_study

_STUDY_HELP = "; ".join(f"{name}: {text}" for name, (_, text) in STUDIES.items())


@click.command(cls=GroupedCommand, context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
               epilog="Built-in studies — " + _STUDY_HELP + ". A custom study is a YAML file: arms: {name: {option: "
                      "value, ...}, ...}, the first arm being the baseline.")
@option("Study", "--study", default=None, help="A built-in study name or a YAML file of arms.")
@option("Study", "--seeds", type=int, default=1, help="Runs per arm; run k uses seed --seed + k.")
@train_options
@click.pass_context
def main(click_ctx: click.Context, study: str | None, seeds: int, **options: Any) -> None:
    """Run every arm of an ablation study over several seeds (resumable) and report the differences.

    Every dali-train option sets the base config the arms change."""
    from click.core import ParameterSource

    overrides = options.pop("aug_overrides")
    given = {k for k in options if click_ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    options["augment"] = with_overrides(options["augment"], overrides)

    def work() -> tuple[Any, Path, list]:
        if not study:
            raise ConfigError(f"--study is required: one of {', '.join(STUDIES)}, or a YAML file of arms")
        if seeds < 1:
            raise ConfigError(f"--seeds={seeds} is invalid: expected an integer >= 1 (runs per arm)")
        if not options["output"]:
            raise ConfigError("--output DIR is required: the study directory (rerun with the same one to resume)")
        output = Path(options["output"]).expanduser()
        if output.exists() and not output.is_dir():
            raise ConfigError(f"--output {output} is a file; give a directory")
        base = TrainConfig.from_dict(options, source="options")
        spec = load_study(study, base)
        if options.get("warmup_epochs") is None:  # the default warmup follows each arm's epochs, not the base's
            for changes in spec.arms.values():
                if "epochs" in changes:
                    changes.setdefault("warmup_epochs", None)
        arm_configs(spec, base)  # every arm valid before the first run starts
        for k in sorted(given):
            setters = [arm for arm, changes in spec.arms.items() if k in changes]
            if setters:
                click.echo(f"note: --{k.replace('_', '-')} is set by arm(s) {', '.join(setters)} of this study; "
                           "they use their own value")
        check_existing(spec, base, seeds=seeds, output=output)
        output.mkdir(parents=True, exist_ok=True)
        # a caller may hand the runs a stop source in click's context object (tests do): {"stop": source}
        stop = (click_ctx.obj or {}).get("stop")
        records = run_study(spec, base, seeds=seeds, output=output, stop=stop)
        write_results(records, output / "results.csv")
        write_summary(spec, base, seeds, records, output / "summary.md")
        write_plots(spec, records, output)
        return spec, output, records

    spec, output, records = _run_guarded(work, second_interrupt="interrupted; finished runs are kept — rerun the "
                                         "same dali-ablate command to resume the study")
    failed = [r for r in records if r.status == "failed"]
    earlier = sum(r.note == "finished earlier" for r in records)
    click.echo(f"study {spec.name}: {sum(r.status == 'done' for r in records)} run(s) done ({earlier} finished "
               f"earlier), {sum(r.status == 'skipped' for r in records)} not run (skipped arms), {len(failed)} "
               f"failed — "
               f"{output / 'summary.md'}, {output / 'results.csv'}, {output / 'curves.png'}, "
               f"{output / 'final_acc.png'}")
    if failed:
        sys.exit(1)


for _param in main.params:  # the shared dali-train options, with the meaning they have here
    if _param.name == "output":
        _param.help = ("The study directory (required): <output>/<arm>/seed<seed>/ per run, results.csv, "
                       "summary.md, curves.png, final_acc.png. Rerun with the same one to resume.")
        _param.show_default = False
    elif _param.name == "seed":
        _param.help = "Base seed: run k of every arm uses seed + k."
