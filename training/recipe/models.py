"""Classifiers: `create_model(name)` builds one of MODELS, with optional stochastic depth (DropPath).

* ``resnet18``    CIFAR ResNet-18 (kuangliu/pytorch-cifar layout): 3x3 stem, stride 1, no max-pool; 11.17M params.
* ``tv_resnet18`` torchvision's ResNet-18 (ImageNet stem: 7x7/2 conv + max-pool), same weights layout as
                  ``torchvision.models.resnet18(weights=None)``; never downloads weights.
* ``resnet20``    He et al. 2016 CIFAR ResNet-20 (16/32/64 wide, 3 blocks per stage), 1x1-conv projection shortcuts
                  where the shape changes (option B), so it has 0.27M params rather than option A's 0.269M.
* ``resnet50``    torchvision's ResNet-50 (ImageNet stem, bottleneck blocks), same weights layout as
                  ``torchvision.models.resnet50(weights=None)``: randomly initialised, never downloads weights.

Besides these, ``create_model`` builds any timm model by its name (``timm.list_models()``, e.g. ``resnet10t``,
``convnext_tiny``; stochastic depth as timm's ``drop_path_rate``) and torchvision's classification models as
``tv_<name>`` (``torchvision.models.list_models(torchvision.models)``, e.g. ``tv_mobilenet_v3_small``), randomly
initialised: nothing is downloaded (``--pretrained`` loads weights from a local file, training/recipe/pretrained.py).
The names above win over timm's models of the same name; ``tv_resnet18`` is the one above (torchvision's layout).

The CIFAR-stem models (``resnet18``, ``resnet20``) keep full resolution through their first stage, which suits
32-px images; above CIFAR_STEM_MAX_SIZE pixels ``create_model(..., image_size=)`` refuses them (see there). timm's
and torchvision's models take any size.

Every model works with ``channels_last`` and under ``torch.autocast``: nothing here depends on memory layout
or dtype, and DropPath makes its mask in the input's dtype on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock as _TVBasicBlock
from torchvision.models.resnet import Bottleneck as _TVBottleneck

from dali_pipes.errors import ConfigError

from ..choices import MODELS, model_source  # noqa: F401  (MODELS: its builders are here)
from .zoo import timm_model, torchvision_model

CIFAR_STEM_MODELS = ("resnet18", "resnet20")
# Largest input side (pixels) a CIFAR-stem model accepts. Its first stage runs at the input's full resolution
# (ImageNet stems divide it by 4), so activation memory and FLOPs grow with the side squared: at 224 px CIFAR
# ResNet-18 needs 49x its 32-px memory (about 0.1 GiB of saved activations per image in fp32, so >10 GiB for a
# batch of 128) and ~27 GFLOPs per image, 15x torchvision's ResNet-18 at the same size.
CIFAR_STEM_MAX_SIZE = 64


class DropPath(nn.Module):
    """Stochastic depth (timm semantics): drop a sample's whole residual branch with probability ``drop_prob``.

    In train mode each sample's branch is zeroed with probability p and kept ones are scaled by 1/(1-p), so the
    expected output equals the input; in eval mode it is the identity. The mask is drawn on the input's device
    (no host sync, no ``.item()``), so it costs nothing extra under CUDA graphs / torch.compile.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        _check_drop_path(drop_prob)
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        # One Bernoulli draw per sample, broadcast over (C, H, W): the branch is dropped for the whole sample.
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        # Divide x (not the mask) by keep: the rounding then happens per element, in fp32 opmath, instead of
        # rounding 1/keep once to bf16/fp16, which would bias every kept sample by the same amount.
        return x.div(keep) * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: identity, or 1x1 conv + BN when the stride or width changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Two ReLU modules, not one called twice: PT2E quantizers match patterns per module call site, and a module
        # used twice becomes one pattern with two outputs (torchao's X86InductorQuantizer then refuses the model).
        self.relu = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Only the residual branch is dropped: a dropped block passes its input through the shortcut unchanged.
        return self.relu2(self.shortcut(x) + self.drop_path(out))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stride-1 stem without max-pool, so the first stage sees the full 32x32 grid."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int], strides: Sequence[int], *,
                 num_classes: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        rates = iter(_drop_rates(drop_path, sum(depths)))
        in_planes, stages = widths[0], []
        for width, depth, stride in zip(widths, depths, strides):
            blocks = []
            for i in range(depth):
                blocks.append(BasicBlock(in_planes, width, stride if i == 0 else 1, next(rates)))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        # Named layer1..layerN like torchvision, so checkpoints and logs read the same across models.
        for i, stage in enumerate(stages, 1):
            self.add_module(f"layer{i}", stage)
        self.stages = len(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _TVDropPathBlock(_TVBasicBlock):
    """torchvision's BasicBlock with a DropPath on the residual branch; adds no parameters or buffers, so the
    state dict is exactly torchvision's and its checkpoints load either way."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop_path = DropPath(0.0)  # set per block by _tv_resnet18, which knows the block's depth
        self.relu2 = nn.ReLU(inplace=True)  # torchvision calls self.relu twice; see BasicBlock for why not here

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(identity + self.drop_path(out))


class _TVDropPathBottleneck(_TVBottleneck):
    """torchvision's Bottleneck with a DropPath on the residual branch (no parameters added, as above)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop_path = DropPath(0.0)  # set per block by _tv_resnet, which knows the block's depth
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu2(identity + self.drop_path(out))


def _check_drop_path(drop_path: float) -> None:
    ok = not isinstance(drop_path, bool) and isinstance(drop_path, (int, float)) and math.isfinite(drop_path)
    if not ok or not 0.0 <= drop_path < 1.0:
        raise ConfigError(f"drop_path={drop_path!r} is invalid: use a number in [0, 1) (0 disables stochastic "
                          "depth; 0.05-0.2 is typical for CIFAR ResNets)")


def _drop_rates(drop_path: float, n_blocks: int) -> list[float]:
    """Linear in depth (Huang et al. 2016): 0 at the first block, ``drop_path`` at the last. Early blocks compute
    features every later block relies on, so they are dropped least."""
    if n_blocks == 1:
        return [float(drop_path)]
    return [drop_path * i / (n_blocks - 1) for i in range(n_blocks)]


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs, BN weight 1 / bias 0.

    Kaiming init keeps activation variance roughly constant through stacks of conv+ReLU (He et al. 2015), so a
    deep net starts neither exploding nor vanishing; fan_out is torchvision's choice and the one its ResNets are
    tuned with. BN at 1/0 starts each normalisation as a plain standardisation, letting training decide the scale.
    The final Linear keeps PyTorch's default (uniform, small), which gives near-uniform initial predictions.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _resnet18(num_classes: int, drop_path: float) -> nn.Module:
    return CifarResNet((64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2), num_classes=num_classes,
                       drop_path=drop_path)


def _resnet20(num_classes: int, drop_path: float) -> nn.Module:
    return CifarResNet((16, 32, 64), (3, 3, 3), (1, 2, 2), num_classes=num_classes, drop_path=drop_path)


def _tv_resnet(block: type[nn.Module], depths: list[int], num_classes: int, drop_path: float) -> nn.Module:
    # torchvision.models.resnet18/50(weights=None) is exactly ResNet(BasicBlock|Bottleneck, depths); building it
    # from the subclasses gives the same modules, names and init, plus a DropPath slot. Nothing is downloaded.
    model = torchvision.models.resnet.ResNet(block, depths, num_classes=num_classes)
    blocks = [m for m in model.modules() if isinstance(m, block)]
    for b, rate in zip(blocks, _drop_rates(drop_path, len(blocks))):
        b.drop_path = DropPath(rate)
    return model


def _tv_resnet18(num_classes: int, drop_path: float) -> nn.Module:
    return _tv_resnet(_TVDropPathBlock, [2, 2, 2, 2], num_classes, drop_path)


def _resnet50(num_classes: int, drop_path: float) -> nn.Module:
    return _tv_resnet(_TVDropPathBottleneck, [3, 4, 6, 3], num_classes, drop_path)


_BUILDERS: dict[str, Callable[[int, float], nn.Module]] = {
    "resnet18": _resnet18, "tv_resnet18": _tv_resnet18, "resnet20": _resnet20, "resnet50": _resnet50}


def create_model(name: str, *, num_classes: int = 10, drop_path: float = 0.0,
                 image_size: int | None = None) -> nn.Module:
    """Build model ``name`` (one of MODELS, a timm model name, or ``tv_<torchvision name>``) with ``num_classes``
    outputs and stochastic depth up to ``drop_path``, randomly initialised.

    ``image_size`` (the input side in pixels, when known) refuses a CIFAR-stem model above CIFAR_STEM_MAX_SIZE, and
    sizes a timm model built for one input size (a ViT's position embeddings) to it.
    """
    source = model_source(name)
    if image_size is not None and name in CIFAR_STEM_MODELS and image_size > CIFAR_STEM_MAX_SIZE:
        raise ConfigError(f"model={name!r} has a CIFAR stem (full resolution through its first stage): at "
                          f"image_size={image_size} its activations and FLOPs are {(image_size / 32) ** 2:.0f}x "
                          f"those at 32 px; above {CIFAR_STEM_MAX_SIZE} px use tv_resnet18 or resnet50")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r} is invalid: a classifier needs an integer >= 2")
    _check_drop_path(drop_path)
    if source == "timm":
        return timm_model(name, num_classes, float(drop_path), image_size)
    if source == "torchvision":
        return torchvision_model(name, num_classes, float(drop_path))
    model = _BUILDERS[name](num_classes, float(drop_path))
    _init_weights(model)
    return model
