"""first_batch.png and dali-preview grids (#24): no caption, row label or title overlaps another text, a tile of
another row, or the edge of the picture — checked on the text boxes matplotlib draws, at 1, 2 and 4 rows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.outputs.grid import Row, grid_figure

LONG_TITLE = ("cifar10, first training batch as the model sees it: 32 of 128 images, augment weak+autoaugment, Mixup "
              "alpha 0.2, CutMix alpha 1.0, mixed with probability 0.5. Caption: the dominant label, with its weight in "
              "the target where the sample is mixed")


def _rows(count: int, *, per_row: int, captions: bool, label: str) -> list[Row]:
    tiles = np.zeros((per_row, 32, 32, 3), dtype=np.uint8)
    names = ("automobile 0.63", "airplane", "truck 0.51", "horse", "ship 0.98", "frog", "deer 0.50", "cat")
    return [Row(label.format(k=k + 1), tiles, tuple(names[c % len(names)] for c in range(per_row)) if captions
                else ()) for k in range(count)]


def _overlaps(fig) -> list[str]:
    """Every pair of drawn things that intersect: texts with texts, texts with tiles not their own, anything with
    the edge of the figure."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []  # (what, box, the axes it belongs to)
    if fig._suptitle is not None:
        boxes.append(("title", fig._suptitle.get_window_extent(renderer), None))
    tiles = []
    for ax in fig.axes:
        if not ax.axison:
            continue
        tiles.append((ax, ax.get_window_extent(renderer)))
        for what, text in (("caption", ax.title), ("row label", ax.yaxis.label)):
            if text.get_text():
                boxes.append((f"{what} {text.get_text()!r}", text.get_window_extent(renderer), ax))
    found = []
    for (a, box_a, _), (b, box_b, _) in itertools.combinations(boxes, 2):
        if box_a.overlaps(box_b):
            found.append(f"{a} / {b}")
    for (a, box, own), (ax, tile) in itertools.product(boxes, tiles):
        if ax is not own and box.overlaps(tile):
            found.append(f"{a} / a tile")
    width, height = fig.canvas.get_width_height()
    for a, box, _ in boxes:
        if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
            found.append(f"{a} outside the picture")
    plt.close(fig)
    return found


@pytest.mark.parametrize("count", [1, 2, 4])
def test_first_batch_captions_and_title_never_overlap(count) -> None:
    fig = grid_figure(_rows(count, per_row=8, captions=True, label="{k}-8"), LONG_TITLE)
    assert _overlaps(fig) == []


@pytest.mark.parametrize("count", [1, 2, 4, 19])  # 19: dali-preview --ops of weak+autoaugment, 3 draws
def test_preview_ops_row_labels_and_title_never_overlap(count) -> None:
    fig = grid_figure(_rows(count, per_row=4, captions=False, label="random-resized crop: torchvision #{k}"),
                      "folder: {crop_padding=4, flip_p=0.5, policy=autoaugment} — one operation per row")
    assert _overlaps(fig) == []
