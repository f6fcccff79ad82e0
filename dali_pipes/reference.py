"""The torchvision reference: the same recipe with ``torchvision.transforms.v2`` and a ``DataLoader``.

It is the CPU fallback backend and the oracle the DALI graph is tested against. Each sample's parameters are the ones
the DALI graph gets (dali_pipes.draws: functions of seed, epoch and dataset index), and what torchvision still draws
itself runs under a torch seed derived from the same, so batches do not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from . import draws
from .config import AugmentConfig
from .errors import DataError
from .plan import derive_seed
from .shards import ShardDataset, TarSamples
from .sources import ArrayDataset, FolderDataset


class ReferenceTransform:
    """uint8 CHW tensor + its drawn parameters -> normalized float32 CHW, in the order documented in
    :mod:`dali_pipes.config`, with torchvision's functional ops.

    The per-sample parameters come from :func:`dali_pipes.draws.draw`, the draws the DALI graph is fed, so both
    backends apply the same crop, flip, rotation, affine, colour factors, blur sigma and erase box to each sample.
    What still draws from torch's generator (seeded per sample by the caller): the folder crops' random-resized-crop
    and the policies, whose torchvision classes cannot take given parameters.

    `resize` (image folders): the recipe's crop brings each image to `size` first ("resized": RandomResizedCrop;
    "centre": Resize of the shorter side + CenterCrop; "pad": a squash Resize), bilinear and antialiased.
    """

    def __init__(self, cfg: AugmentConfig, size: tuple[int, int], *, resize: bool = False):
        self.cfg, self.size = cfg, size
        bilinear = dict(interpolation=InterpolationMode.BILINEAR, antialias=True)
        steps: list[Callable] = []
        if resize and cfg.crop == "resized":
            steps.append(v2.RandomResizedCrop(list(size), scale=cfg.rrc_scale, ratio=cfg.rrc_ratio, **bilinear))
        elif resize and cfg.crop == "centre":
            steps += [v2.Resize(int(size[0] / cfg.crop_ratio), **bilinear), v2.CenterCrop(list(size))]
        elif resize:
            steps.append(v2.Resize(list(size), **bilinear))
        self.resize = v2.Compose(steps) if steps else None
        if cfg.policy == "autoaugment":
            self.policy = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
        elif cfg.policy == "randaugment":
            self.policy = v2.RandAugment(num_ops=cfg.randaugment_n, magnitude=cfg.randaugment_m,
                                         num_magnitude_bins=31)
        elif cfg.policy == "trivialaugment":
            self.policy = v2.TrivialAugmentWide(num_magnitude_bins=31)
        else:
            self.policy = None

    def __call__(self, image: torch.Tensor, p: dict[str, np.ndarray]) -> torch.Tensor:
        """`p`: one sample's parameters (dali_pipes.draws.draw for this sample, without the batch axis)."""
        cfg, (h, w) = self.cfg, self.size
        nearest = dict(interpolation=InterpolationMode.NEAREST, fill=cfg.pad_fill)
        if self.resize is not None:
            image = self.resize(image)
        if cfg.crop_padding > 0:  # RandomCrop(padding=p) at the drawn corner of the padded image
            pad = cfg.crop_padding
            image = F.pad(image, [pad], fill=cfg.pad_fill, padding_mode=cfg.pad_mode)
            y, x = (int(v) + pad for v in p["crop"])
            image = F.crop(image, y, x, h, w)
        if cfg.flip_p > 0 and p["flip"]:
            image = F.horizontal_flip(image)
        if cfg.rotation > 0:
            image = F.rotate(image, float(p["rotate"]), **nearest)
        if cfg.has_affine and p["affine_apply"]:
            image = F.affine(image, angle=float(p["affine_angle"]), translate=[float(v) for v in p["affine_translate"]],
                             scale=float(p["affine_scale"]), shear=[float(p["affine_shear"]), 0.0], **nearest)
        # ColorJitter's operations in the DALI graph's fixed order (torchvision's own class permutes them per image)
        if cfg.contrast > 0:
            image = F.adjust_contrast(image, float(p["contrast"]))
        if cfg.brightness > 0:
            image = F.adjust_brightness(image, float(p["brightness"]))
        if cfg.saturation > 0:
            image = F.adjust_saturation(image, float(p["saturation"]))
        if cfg.hue > 0:
            image = F.adjust_hue(image, float(p["hue"]))
        if cfg.has_blur and p["blur_apply"]:
            sigma = float(p["blur_sigma"])
            image = F.gaussian_blur(image, [cfg.blur_kernel, cfg.blur_kernel], [sigma, sigma])
        if self.policy is not None:
            image = self.policy(image)
        image = F.normalize(F.to_dtype(image, torch.float32, scale=True), list(cfg.mean), list(cfg.std))
        if cfg.erase_p > 0 and p["erase_shape"][0] > 0:
            (top, left), (eh, ew) = (int(v) for v in p["erase_anchor"]), (int(v) for v in p["erase_shape"])
            image = F.erase(image, top, left, eh, ew, torch.tensor(float(cfg.erase_value)))
        return image


def worker_error(exc: DataError) -> DataError:
    """``exc`` as one line: a DataLoader re-raises a worker's error with the worker's traceback as its message.

    The message then reads "Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...", ending with
    "dali_pipes.errors.DataError: <the original message>"; that last part is what the user needs.
    """
    lines = str(exc).splitlines()
    if len(lines) <= 1:
        return exc
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    original = next((line[len(prefix):] for line in reversed(lines) if line.startswith(prefix)), lines[0])
    return type(exc)(original)


class ReferenceDataset(Dataset):
    """(epoch, dataset index) -> (normalized image, index); the epoch travels with the index to the workers."""

    def __init__(self, data: ArrayDataset | FolderDataset, cfg: AugmentConfig, size: tuple[int, int], seed: int):
        self.data = data
        self.is_folder = isinstance(data, (FolderDataset, ShardDataset))  # encoded files: decode and resize
        self.tar = TarSamples(data) if isinstance(data, ShardDataset) else None
        self.transform = ReferenceTransform(cfg, size, resize=self.is_folder)
        self.cfg, self.size, self.seed = cfg, size, seed

    def __len__(self) -> int:
        return len(self.data)

    def _read(self, index: int) -> torch.Tensor:
        if self.tar is not None:
            from .folder import decode_bytes_rgb

            encoded, label = self.tar.read(index)
            if label != self.data.labels[index]:
                raise DataError(f"sample {index} of shard {self.data.tars[int(self.data.shard[index])]} has label "
                                f"{label} where the manifest says {self.data.labels[index]}: a manifest from another "
                                "packing; repack")
            return decode_bytes_rgb(encoded, f"{self.data.image_name(index)} in {self.data.tars[self.data.shard[index]]}")
        if self.is_folder:
            from .folder import decode_image_rgb  # the folder module pulls in file I/O helpers only when needed

            return decode_image_rgb(self.data.files[index])
        return torch.from_numpy(np.array(self.data.images[index])).permute(2, 0, 1)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = item
        image = self._read(index)
        params = {k: v[0] for k, v in draws.draw(self.cfg, self.size, self.seed, epoch, np.array([index])).items()}
        # What torchvision still draws itself (folder crops, policies) is seeded per sample; fork_rng keeps the
        # caller's global RNG untouched (workers=0 runs this in the training process).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, epoch, index))
            return self.transform(image, params), index
