"""Issue #24's terminal: `--help` in sections, the aliases users of torchvision's and timm's scripts type, and each
option's default said once, as the command it belongs to uses it."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from training.cli import eval_main, main, prune_main, quantize_main


def _help(command: click.Command) -> str:
    result = CliRunner().invoke(command, ["--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    return result.output


def _record(command: click.Command, name: str) -> tuple[str, str]:
    """The (options, help text) pair --help shows for parameter `name`."""
    ctx = click.Context(command, info_name=command.name, **command.context_settings)
    (param,) = [p for p in command.params if p.name == name]
    return param.get_help_record(ctx)


def test_help_lists_the_options_in_sections() -> None:
    text = _help(main)
    headings = [line.rstrip(":") for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["Run", "Data", "Model", "Optimization", "Augmentation and mixing",
                        "EMA of the weights", "Precision and speed", "Other options"], text
    sections: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = sections.setdefault(line.rstrip(":"), [])
        elif line.startswith("  -"):  # an option's line: its names before the two spaces that start its help
            current += re.findall(r"(?<![\w-])(--?[\w-]+)", line.strip().split("  ")[0])
    assert "--output" in sections["Run"] and "--data-dir" in sections["Data"] and "--lr" in sections["Optimization"]
    assert sections["Other options"] == ["-h", "--help"]
    listed = [name for names in sections.values() for name in names]
    assert len(listed) == len(set(listed)), listed  # each option in one section, once
    assert {opt for p in main.params for opt in p.opts + p.secondary_opts} | {"-h", "--help"} == set(listed)


def test_the_familiar_aliases_set_the_options_they_name() -> None:
    ctx = main.make_context("dali-train", ["-b", "32", "-j", "3", "--wd", "0.01"])
    assert (ctx.params["batch_size"], ctx.params["num_threads"], ctx.params["weight_decay"]) == (32, 3, 0.01)
    for command in (eval_main, prune_main, quantize_main):  # the tools take the data options the same way
        ctx = command.make_context(command.name, ["--checkpoint", "x", "-b", "32", "-j", "3"]
                                   + (["--output", "o"] if command is not eval_main else []))
        assert (ctx.params["batch_size"], ctx.params["num_threads"]) == (32, 3), command.name
    assert _record(main, "batch_size")[0].startswith("-b, --batch-size")
    assert _record(main, "num_threads")[0].startswith("-j, --num-threads")
    assert _record(main, "weight_decay")[0].startswith("--wd, --weight-decay")


def test_output_shows_one_default() -> None:
    _, text = _record(main, "output")
    assert text.count("default") == 1 and "runs/<time>-<model>-<dataset>" in text, text


@pytest.mark.parametrize("command, batch, threads", [
    (eval_main, "default: 256", "default: 0"),
    (prune_main, "default: (the checkpoint's)", "default: (the checkpoint's)"),
    (quantize_main, "default: (the checkpoint's)", "default: (the checkpoint's)"),
])
def test_each_tool_says_its_own_data_defaults(command, batch, threads) -> None:
    batch_help, threads_help = _record(command, "batch_size")[1], _record(command, "num_threads")[1]
    for text, default in ((batch_help, batch), (threads_help, threads)):
        assert default in text and text.count("default") == 1, text
        assert "dali-eval" not in text and "otherwise" not in text, text


def test_help_answers_in_under_a_second() -> None:
    """The whole command, as a user starts it: the interpreter, the imports and the formatting (best of 3, on a
    shared machine)."""
    code = "from training.entry import train; train()"
    times = []
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60,
                              check=False)
        times.append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr
    assert min(times) < 1.0, times
