"""What the benchmark scripts share around measuring: the output options, and the JSON report and plot written
where they ask."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def write_outputs(report: dict[str, Any], *, json_path: str | None, plot_path: str | None,
                  to_json: Callable[[dict[str, Any]], str], plot: Callable[[dict[str, Any], str], None]) -> None:
    """Write `report` as JSON and/or plot it; an unwritable path is a one-line error and exit status 2."""
    try:
        if json_path:
            Path(json_path).write_text(to_json(report) + "\n", encoding="utf-8")
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
    if value is not None:
        parent = Path(value).expanduser().resolve().parent
        if not parent.is_dir():
            raise click.BadParameter(f"directory {str(parent)!r} does not exist")
        if Path(value).is_dir():
            raise click.BadParameter(f"{value!r} is a directory")
    return value


def output_options(f: Callable) -> Callable:
    """--json FILE, --plot FILE (checked before anything is measured) and --quiet."""
    f = click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")(f)
    f = click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
                     callback=_check_out_path, help="Write a bar chart (PNG) here.")(f)
    return click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
                        callback=_check_out_path, help="Write the report as JSON here.")(f)
