"""What the benchmark scripts share around measuring: the output options, the JSON report (rewritten as rows
finish) with its rows as CSV beside it (same name, ``.csv``), and the plot, written where they ask; how a failed
row's error is told (training.harness) and the atomic write (training.atomic). Importing this module needs only the
standard library (click is imported where an option or a message needs it), so benchmarks/gpu_check.py can use it
on a machine that has the bare minimum."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training.atomic import write_text_atomic
from training.harness import one_line

__all__ = ["csv_path", "flat_row", "json_updater", "one_line", "output_options", "rows_csv", "write_outputs",
           "write_text_atomic"]


def csv_path(json_path: str | Path) -> Path:
    """Where the CSV of a JSON report goes: beside it, same name, ``.csv`` (never the JSON's own path)."""
    path = Path(json_path)
    return path.with_name(path.name + ".csv") if path.suffix == ".csv" else path.with_suffix(".csv")


def flat_row(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A JSON row as CSV cells: nested mappings as ``parent.key`` columns, lists of numbers as space-separated
    values (None as nothing), lists of mappings as compact JSON, None as an empty cell."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_row(value, f"{name}."))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list)) for v in value):
            out[name] = json.dumps(value, separators=(",", ":"), allow_nan=False)
        elif isinstance(value, (list, tuple)):
            out[name] = " ".join(str(v) for v in value if v is not None)
        else:
            out[name] = "" if value is None else value
    return out


def rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV text: one line per row, the columns in the order they first appear (flat_row)."""
    flat = [flat_row(r) for r in rows]
    fields = list(dict.fromkeys(k for r in flat for k in r))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(flat)
    return text.getvalue()


def _write_report(json_path: str, report: dict[str, Any], to_json: Callable[[dict[str, Any]], str]) -> None:
    write_text_atomic(json_path, to_json(report) + "\n")
    write_text_atomic(csv_path(json_path), rows_csv(report["results"]))


def json_updater(json_path: str | None, to_json: Callable[[dict[str, Any]], str]
                 ) -> Callable[[dict[str, Any]], None] | None:
    """What a benchmark calls with its partial report each time rows finish: rewrites `json_path` and the CSV
    beside it, so a run stopped midway keeps the rows it finished. None when no JSON was asked for."""
    if not json_path:
        return None
    return lambda report: _write_report(json_path, report, to_json)


def write_outputs(report: dict[str, Any], *, json_path: str | None, plot_path: str | None,
                  to_json: Callable[[dict[str, Any]], str], figure: Callable[[dict[str, Any]], Any]) -> None:
    """Write `report` as JSON with its rows as CSV beside it, and/or its `figure` (a matplotlib Figure) as a PNG;
    an unwritable path is a one-line error and exit status 2."""
    import click

    try:
        if json_path:
            _write_report(json_path, report, to_json)
            click.echo(f"json: {json_path}")
            click.echo(f"csv: {csv_path(json_path)}")
        if plot_path:
            if report["results"]:
                _save_png(figure(report), plot_path)
                click.echo(f"plot: {plot_path}")
            else:
                click.echo("plot: skipped (no rows measured)")
    except OSError as e:
        click.echo(f"error: cannot write output: {e}", err=True)
        sys.exit(2)


def _save_png(fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


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
                        callback=_check_out_path,
                        help="Write the report as JSON here, and its rows as CSV beside it (same name, .csv).")(f)
