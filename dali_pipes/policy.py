"""AutoAugment, RandAugment and TrivialAugmentWide with their per-sample choices drawn on the host.

``nvidia.dali.auto_aug``'s ``apply_*`` functions draw their choices with ``fn.random`` and route samples through
a binary tree of conditionals, splitting every CPU parameter at every level: ``weak+autoaugment`` had 193 CPU
operators (115 of them ``_conditional__Split``). None of them take given parameters, so this module keeps DALI's
policies and augmentations (their public ``Policy``/``Augmentation`` objects: the same operations, magnitude
tables and ``mag_to_param`` mappings) and replaces only the drawing and routing:

- the host draws, per sample and stage, which augmentation runs and its parameter (the magnitude bin's value,
  negated on a coin flip for the augmentations DALI negates), in bulk (dali_pipes.draws' counter-based streams);
- the graph applies stage by stage a flat ``if`` per augmentation, predicate and parameter read straight from the
  external source, so each branch splits its own parameter once and nothing else runs on the CPU.

The distribution of what is applied is DALI's: AutoAugment picks one of the policy's sub-policies uniformly and runs
each stage with its probability; RandAugment runs `n` augmentations drawn uniformly from the suite at bin `m`;
TrivialAugmentWide runs one, at a bin drawn uniformly. The torchvision reference keeps torchvision's own policy
classes and draws: its policies cannot take given parameters, so the policies agree in distribution only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .config import AugmentConfig
from .draws import Stream

_SALT = 0x9011C7  # the policies' streams, apart from the recipe's
# torchvision's AutoAugment/RandAugment translate up to 150/331 of the image side at their top bin (of 10 or 31);
# DALI's CIFAR-10 policy spreads its range over 11 bins, hence the 10/9 for that policy.
_TV_TRANSLATE_REL = 150.0 / 331.0
NUM_BINS = {"autoaugment": 11, "randaugment": 31, "trivialaugment": 31}


@dataclass(frozen=True)
class Stage:
    """One position in the sequence of augmentations: which of `augmentations` each sample runs there."""

    augmentations: tuple  # DALI Augmentation objects that can run at this stage


@dataclass(frozen=True)
class PolicyPlan:
    name: str
    stages: tuple[Stage, ...]
    sub_policies: tuple  # autoaugment: ((augmentation, probability, bin | None), ...) per sub-policy
    translate_rel: float  # max translation as a fraction of the side at the top bin


@functools.lru_cache(maxsize=None)
def plan(cfg_policy: str, n: int, size: tuple[int, int]) -> PolicyPlan:
    """The policy's augmentations per stage (DALI's suites; translations relative to the image side)."""
    from nvidia.dali.auto_aug import auto_augment, rand_augment, trivial_augment

    if cfg_policy == "autoaugment":
        rel = _TV_TRANSLATE_REL * 10 / 9
        policy = auto_augment.get_reduced_cifar10_policy(use_shape=True, max_translate_rel=rel)
        subs = tuple(tuple(sub) for sub in policy.sub_policies)
        depth = max(len(sub) for sub in subs)
        stages = tuple(Stage(tuple(dict.fromkeys(sub[k][0] for sub in subs if len(sub) > k)))
                       for k in range(depth))
        return PolicyPlan(cfg_policy, stages, subs, rel)
    if cfg_policy == "randaugment":
        suite = tuple(rand_augment.get_rand_augment_suite(use_shape=True, max_translate_rel=_TV_TRANSLATE_REL))
        return PolicyPlan(cfg_policy, tuple(Stage(suite) for _ in range(n)), (), _TV_TRANSLATE_REL)
    # TrivialAugmentWide translates up to 32 px over 31 bins in torchvision: the whole side of a CIFAR image.
    rel = 32 / size[1]
    suite = tuple(trivial_augment.get_trivial_augment_wide_suite(use_shape=True, max_translate_rel=rel))
    return PolicyPlan(cfg_policy, (Stage(suite),), (), rel)


def _plan_of(cfg: AugmentConfig, size: tuple[int, int]) -> PolicyPlan:
    return plan(cfg.policy, cfg.randaugment_n, tuple(size))


def _param_table(aug, num_bins: int) -> np.ndarray | None:
    """DALI's parameter of `aug` for each signed bin 2 * bin + negate (as Augmentation computes it)."""
    if aug.mag_range is None:
        return None
    lo, hi = aug.mag_range
    magnitudes = np.linspace(lo, hi, num_bins, dtype=np.float64)
    params = [np.array(aug.mag_to_param(m * (-1 if neg else 1))) for m in magnitudes for neg in (0, 1)]
    table = np.stack(params)
    return table.astype(np.float32) if table.dtype.kind == "f" else table


def input_names(cfg: AugmentConfig, size: tuple[int, int]) -> list[str]:
    """The external-source outputs the policy reads, in order: per stage and augmentation a predicate, and a
    parameter where the augmentation has one."""
    if cfg.policy == "none":
        return []
    p = _plan_of(cfg, size)
    names = []
    for k, stage in enumerate(p.stages):
        for aug in stage.augmentations:
            names.append(f"policy{k}.{aug.name}")
            if aug.mag_range is not None:
                names.append(f"policy{k}.{aug.name}.param")
    return names


def draw(cfg: AugmentConfig, size: tuple[int, int], seed: int, epoch: int,
         index: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample: for each stage and augmentation, whether it runs (bool) and its parameter."""
    if cfg.policy == "none":
        return {}
    p = _plan_of(cfg, size)
    bins = NUM_BINS[cfg.policy]
    s = Stream(seed, epoch, salt=_SALT)
    index = np.asarray(index, dtype=np.int64)
    n = len(index)
    depth = len(p.stages)
    chosen = np.full((n, depth), -1, dtype=np.int64)  # which augmentation of the stage runs; -1: none
    magnitude = np.zeros((n, depth), dtype=np.int64)
    if cfg.policy == "autoaugment":
        sub = s.integers(1, index, 0, len(p.sub_policies) - 1)
        runs = s.uniform(2, index, count=depth)
        for j, sub_policy in enumerate(p.sub_policies):
            rows = sub == j
            for k, (aug, probability, mag_bin) in enumerate(sub_policy):
                ok = rows & (runs[:, k] < probability)
                chosen[ok, k] = p.stages[k].augmentations.index(aug)
                magnitude[ok, k] = mag_bin or 0
    elif cfg.policy == "randaugment":
        chosen[:] = s.integers(1, index, 0, len(p.stages[0].augmentations) - 1, count=depth).reshape(n, depth)
        magnitude[:] = cfg.randaugment_m
    else:
        chosen[:, 0] = s.integers(1, index, 0, len(p.stages[0].augmentations) - 1)
        magnitude[:, 0] = s.integers(3, index, 0, bins - 1)
    negate = (s.uniform(4, index, count=depth) < 0.5).reshape(n, depth)
    out: dict[str, np.ndarray] = {}
    for k, stage in enumerate(p.stages):
        for a, aug in enumerate(stage.augmentations):
            runs_here = chosen[:, k] == a
            out[f"policy{k}.{aug.name}"] = runs_here
            table = _param_table(aug, bins)
            if table is not None:
                signed = 2 * magnitude[:, k] + (negate[:, k] if aug.randomly_negate else 0)
                out[f"policy{k}.{aug.name}.param"] = table[signed]
    return out


def apply(images, cfg: AugmentConfig, size: tuple[int, int], inputs: dict, device: str):
    """The policy's stages on uint8 HWC `images`, with the drawn predicates and parameters in `inputs`
    (DataNodes of the external source, by :func:`input_names`). Needs ``enable_conditionals=True``."""
    import nvidia.dali.types as types

    p = _plan_of(cfg, size)
    # torchvision: fill 0, nearest; translations relative to the side (shape given)
    extra = dict(shape=list(size), fill_value=0, interp_type=types.INTERP_NN)
    for k, stage in enumerate(p.stages):
        for aug in stage.augmentations:
            param = inputs.get(f"policy{k}.{aug.name}.param")
            if inputs[f"policy{k}.{aug.name}"]:
                if param is not None and aug.param_device == "auto" and device == "gpu":
                    param = param.gpu()  # e.g. sharpness's kernel is a regular input of the GPU filter
                kwargs = {key: value for key, value in extra.items() if key in _op_args(aug)}
                images = aug.op(images, param, **kwargs)
    return images


@functools.lru_cache(maxsize=None)
def _op_args(aug) -> frozenset[str]:
    import inspect

    return frozenset(inspect.signature(aug.op).parameters)
