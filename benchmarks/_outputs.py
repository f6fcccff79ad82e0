"""What the benchmark scripts share around measuring: the output options, the JSON report (rewritten as rows
finish) and plot written where they ask; how a failed row's error is told (training.harness) and the atomic write
(training.atomic). Importing this module needs only the standard library (click is imported where an option or a
message needs it), so benchmarks/gpu_check.py can use it on a machine that has the bare minimum."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.atomic import write_text_atomic
from training.harness import one_line

__all__ = ["json_updater", "one_line", "output_options", "write_outputs", "write_text_atomic"]


def json_updater(json_path: str | None, to_json: Callable[[dict[str, Any]], str]
                 ) -> Callable[[dict[str, Any]], None] | None:
    """What a benchmark calls with its partial report each time rows finish: rewrites `json_path`, so a run
    stopped midway keeps the rows it finished. None when no JSON was asked for."""
    if not json_path:
        return None
    return lambda report: write_text_atomic(json_path, to_json(report) + "\n")


def write_outputs(report: dict[str, Any], *, json_path: str | None, plot_path: str | None,
                  to_json: Callable[[dict[str, Any]], str], plot: Callable[[dict[str, Any], str], None]) -> None:
    """Write `report` as JSON and/or plot it; an unwritable path is a one-line error and exit status 2."""
    import click

    try:
        if json_path:
            write_text_atomic(json_path, to_json(report) + "\n")
            click.echo(f"json: {json_path}")
        if plot_path:
            if report["results"]:
                plot(report, plot_path)
                click.echo(f"plot: {plot_path}")
            else:
                click.echo("plot: skipped (no rows measured)")
    except OSError as e:
        click.echo(f"error: cannot write output: {e}", err=True)
        sys.exit(2)


def _check_out_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    import click

    if value is not None:
        parent = Path(value).expanduser().resolve().parent
        if not parent.is_dir():
            raise click.BadParameter(f"directory {str(parent)!r} does not exist")
        if Path(value).is_dir():
            raise click.BadParameter(f"{value!r} is a directory")
    return value


def output_options(f: Callable) -> Callable:
    """--json FILE, --plot FILE (checked before anything is measured) and --quiet."""
    import click

    f = click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")(f)
    f = click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
                     callback=_check_out_path, help="Write a bar chart (PNG) here.")(f)
    return click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
                        callback=_check_out_path, help="Write the report as JSON here.")(f)
