"""first_batch.png: its tiles are the images of the run's first step after mixing, captioned with the dominant
label and its weight; capturing them changes nothing in the step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import loop as run_mod
from training.config import TrainConfig
from training.recipe.engine import _prepare, train_one_epoch
from training.outputs.first_batch import FirstBatch, caption, label_weights, tile_rows
from training.outputs.grid import to_uint8
from training.recipe.mixing import Mixer, dominant_labels


@pytest.mark.slow
def test_the_grid_tiles_are_the_first_step_images_after_mixing(tmp_path: Path) -> None:
    # every batch mixed, so the captions carry weights; batch mode: one lambda for the whole batch
    cfg = TrainConfig(dataset="synthetic", model="resnet20", batch_size=48, num_samples=96, epochs=1,
                      augment="weak", mix_prob=1.0, switch_prob=0.0, output=str(tmp_path), num_threads=2)
    run = run_mod.build_run(cfg, run_dir=tmp_path)
    run.train_loader.set_epoch(0)
    batches = list(run.train_loader)
    replay = Mixer(run.ctx.mixer.cfg)
    replay.load_state_dict(run.ctx.mixer.state_dict())  # the draws the step is about to make
    capture = FirstBatch(label_smoothing=cfg.label_smoothing, max_tiles=32)
    train_one_epoch(run.ctx, batches, on_first_batch=capture)

    images, labels = batches[0]
    seen, targets = replay(_prepare(images, cfg.channels_last), labels)
    assert not torch.equal(seen, images)  # Mixup was applied: the grid is not the loader's output
    assert torch.equal(capture.images, seen[:32])
    dominant = dominant_labels(labels, targets)
    assert torch.equal(capture.labels, dominant[:32]) and capture.batch_size == 48
    rows = tile_rows(capture.images, capture.labels, capture.weights, run.train_loader.cfg, run.train_loader.classes)
    assert [r.label for r in rows] == ["1-8", "9-16", "17-24", "25-32"]
    assert np.array_equal(np.concatenate([r.tiles for r in rows]), to_uint8(seen[:32], run.train_loader.cfg))
    # Mixup with one lambda for the batch: a sample paired with another class carries max(lambda, 1 - lambda)
    other = labels[:32] != labels.flip(0)[:32]
    weights = capture.weights[other]
    assert other.any() and torch.all((weights >= 0.5) & (weights < 0.995))
    assert float(weights.max() - weights.min()) < 1e-6 and torch.all(capture.weights[~other] == 1.0)
    captions = [c for r in rows for c in r.captions]
    assert captions == [caption(run.train_loader.classes[int(k)], float(w)) for k, w in
                        zip(capture.labels, capture.weights)]
    assert any(c.endswith(f" {w:.2f}") for c, w in zip(captions, capture.weights.tolist()) if w < 1)

    path = capture.write(tmp_path / "first_batch.png", run.train_loader, cfg)
    with Image.open(path) as png:
        assert png.size[0] > 8 * 60 and png.size[1] > 4 * 60


@pytest.mark.slow
def test_capturing_the_first_batch_changes_nothing_in_the_step(tmp_path: Path) -> None:
    cfg = TrainConfig(dataset="synthetic", model="resnet20", batch_size=32, num_samples=64, epochs=1,
                      augment="weak", mix_prob=1.0, output=str(tmp_path), num_threads=2)
    runs = [run_mod.build_run(cfg, run_dir=tmp_path) for _ in range(2)]
    runs[0].train_loader.set_epoch(0)
    batches = list(runs[0].train_loader)
    drop_path = torch.get_rng_state()  # the global stream drop path draws from: the same for both steps
    capture = FirstBatch(label_smoothing=cfg.label_smoothing)
    with_capture = train_one_epoch(runs[0].ctx, batches, on_first_batch=capture)
    after = torch.get_rng_state()
    torch.set_rng_state(drop_path)
    without = train_one_epoch(runs[1].ctx, batches)
    assert capture.captured and torch.equal(after, torch.get_rng_state())
    for key in ("loss_sum", "correct", "images", "steps", "position", "nonfinite_losses"):
        assert with_capture[key] == without[key], key
    for (name, a), b in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(runs[0].ctx.mixer.generator.get_state(), runs[1].ctx.mixer.generator.get_state())


def test_label_weights_take_the_smoothing_out() -> None:
    eps, k = 0.1, 10
    unmixed = 1 - eps + eps / k
    mixed = 0.7 * (1 - eps) + eps / k  # lambda 0.7 of one class, 0.3 of another
    weights = label_weights(torch.tensor([unmixed, mixed]), eps, k)
    assert weights.tolist() == pytest.approx([1.0, 0.7])
    assert caption("cat", 1.0) == "cat" and caption("cat", 0.7) == "cat 0.70"
