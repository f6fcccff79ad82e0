"""`dali-train` entry point. The training loop lands with the training issue; until then this prints its status."""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train a CIFAR ResNet with DALI augmentation (not implemented yet: the data layer, dali_pipes, is ready).

    Until the training job lands, use `python benchmarks/augment_throughput.py` or `dali_pipes.create_loader`.
    """
    click.echo("dali-train: the training job is not implemented yet; the data layer (dali_pipes) is. "
               "See README.md.", err=True)
    raise SystemExit(2)
