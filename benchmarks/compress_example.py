"""Compression end to end on a small task where accuracy has room to move, on any machine (no download).

Writes a CIFAR-10-layout dataset (the synthetic class patterns at a third of their contrast under heavy pixel
noise: ResNet-20 ends near 97%, not 100%), trains ResNet-20 on it with dali-train, prunes the result with dali-prune
and quantizes both the trained and the pruned model with dali-quantize; prints one table of what each step measured.

    python benchmarks/compress_example.py --output /tmp/compress-example

Everything lands in OUTPUT (data/, run/, prune/, int8/, pruned-int8/, summary.json); the steps are the library
functions behind the three commands, so the numbers are theirs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import click  # noqa: E402
import numpy as np  # noqa: E402

from dali_pipes.cifar import write_cifar  # noqa: E402
from dali_pipes.synthetic import make_synthetic  # noqa: E402


def write_noisy_cifar(root: Path, *, train: int = 2000, val: int = 1000, contrast: float = 0.35,
                      noise: float = 50.0, seed: int = 7) -> None:
    """`root/cifar-10-batches-py`: synthetic class patterns scaled to `contrast` around grey plus Gaussian pixel
    noise of std `noise` (in 0-255 units), in the official CIFAR-10 layout."""
    rng = np.random.default_rng(seed)

    def split(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        d = make_synthetic(name, seed=3, num_samples=n)
        x = d.images.astype(np.float32)
        x = 128 + (x - x.mean()) * contrast + rng.normal(0, noise, x.shape)
        return np.clip(x, 0, 255).astype(np.uint8), np.asarray(d.labels)

    write_cifar("cifar10", root, split("train", train), split("val", val))


@click.command(context_settings={"show_default": True})
@click.option("--output", required=True, type=click.Path(path_type=Path), help="A new directory for everything.")
@click.option("--epochs", type=int, default=3, help="dali-train epochs of the ResNet-20.")
@click.option("--amount", default="0.2,0.4,0.6", help="dali-prune sparsity stages.")
@click.option("--method", default="l1-unstructured")
@click.option("--finetune-epochs", type=int, default=2)
@click.option("--num-threads", type=int, default=0, help="0: all available cores.")
def main(output: Path, epochs: int, amount: str, method: str, finetune_epochs: int, num_threads: int) -> None:
    from training.config import TrainConfig
    from training.tools.prune import PruneConfig, parse_amounts, run_prune
    from training.tools.quantize import QuantizeConfig, run_quantize
    from training.loop import fit

    if output.exists() and any(output.iterdir()):
        sys.exit(f"error: --output {output} is not empty; choose a new directory")
    write_noisy_cifar(output / "data")
    cfg = TrainConfig(dataset="cifar10", data_dir=str(output / "data"), model="resnet20", epochs=epochs,
                      batch_size=64, lr=0.05, warmup_epochs=0.5, augment="weak", mixup_alpha=0.0, cutmix_alpha=0.0,
                      drop_path=0.0, label_smoothing=0.0, output=str(output / "run"), num_threads=num_threads,
                      patience=0)
    trained = fit(cfg)
    rows = run_prune(output / "run" / "best.pth", output / "prune",
                     PruneConfig(amounts=parse_amounts(amount), method=method, finetune_epochs=finetune_epochs))
    q_float = run_quantize(output / "run" / "best.pth", output / "int8", QuantizeConfig())
    q_pruned = run_quantize(output / "prune" / "pruned.pth", output / "pruned-int8", QuantizeConfig())
    summary = {"trained_val_acc": trained["best_reloaded_val_acc"], "prune": rows, "quantize": q_float,
               "quantize_pruned": q_pruned}
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\ntrained ResNet-20: val acc {100 * trained['best_reloaded_val_acc']:.2f}%")
    for r in rows:
        print(f"  pruned {100 * r['sparsity']:5.1f}% ({method}, {int(r['finetune_epochs'])} fine-tuning epochs): "
              f"val acc {100 * r['val_acc']:.2f}% (right after pruning {100 * r['val_acc_before_finetune']:.2f}%)")
    for name, q in (("trained", q_float), ("pruned", q_pruned)):
        print(f"  int8 static of the {name} model: file {q['size_ratio']:.2f}x, val acc "
              f"{100 * q['float_acc']:.2f}% -> {100 * q['int8_acc']:.2f}%, CPU latency b64 "
              f"{q['float_latency_ms_b64']:.2f} -> {q['int8_latency_ms_b64']:.2f} ms, b1 "
              f"{q['float_latency_ms_b1']:.2f} -> {q['int8_latency_ms_b1']:.2f} ms")


if __name__ == "__main__":
    main()
