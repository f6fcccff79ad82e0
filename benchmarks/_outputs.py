"""What the benchmark scripts share after measuring: the JSON report and the plot, written where asked."""

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
