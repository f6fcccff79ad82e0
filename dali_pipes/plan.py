"""Which samples go into which batch: the epoch plan both backends follow.

The plan is computed in Python from (seed, epoch, shard) alone, so both backends see the same batches, a resumed run
sees the batches an uninterrupted run would have seen, and exact coverage is a property of plain index arithmetic
rather than of a reader's padding rules.
"""

from __future__ import annotations

import numpy as np

_SALT = 0x0DA11  # keeps plan seeds apart from other streams derived from the same user seed


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (DALI and torch both accept it); well mixed by numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def shard_indices(n: int, *, shuffle: bool, seed: int, epoch: int, shard_id: int, num_shards: int,
                  even: bool = False) -> np.ndarray:
    """Dataset indices of one shard for one epoch (int64).

    Shards are strided slices of one permutation (or of 0..n-1 when not shuffling): disjoint, covering, and of sizes
    that differ by at most one. No index is repeated to even them out, so nothing is counted twice. With `even`,
    the last n % num_shards indices of the permutation are left out instead (different ones every epoch), so that
    data-parallel ranks take the same number of steps.
    """
    order = np.random.default_rng([_SALT, seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if even:
        order = order[:n - n % num_shards]
    return order[shard_id::num_shards].astype(np.int64)


def split_batches(indices: np.ndarray, batch_size: int, drop_last: bool) -> list[np.ndarray]:
    """Consecutive batches of `indices`; the final partial batch is kept unless `drop_last`."""
    stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)
    return [indices[i:i + batch_size] for i in range(0, stop, batch_size)]


def num_batches(shard_size: int, batch_size: int, drop_last: bool) -> int:
    return shard_size // batch_size if drop_last else -(-shard_size // batch_size)


def assign_files(counts: tuple[int, ...] | list[int], num_shards: int) -> list[list[int]]:
    """Which tar shards (by number) each of `num_shards` ranks reads: the same every epoch.

    Greedy by size (largest first, each to the rank holding the fewest samples so far, ties to the lower rank and
    the lower shard number): disjoint, covering, and rank sizes differ by at most one tar shard's sample count.
    """
    ranks: list[list[int]] = [[] for _ in range(num_shards)]
    held = [0] * num_shards
    for f in sorted(range(len(counts)), key=lambda f: (-counts[f], f)):
        r = min(range(num_shards), key=lambda r: (held[r], r))
        ranks[r].append(f)
        held[r] += counts[f]
    return [sorted(r) for r in ranks]


def file_shard_indices(counts: tuple[int, ...] | list[int], *, shuffle: bool, seed: int, epoch: int, shard_id: int,
                       num_shards: int, even: bool = False) -> np.ndarray:
    """Dataset indices of one rank for one epoch over a split stored in tar shards of `counts` samples.

    Samples are numbered shard by shard. A rank reads the tar shards :func:`assign_files` gives it, whole, in an
    order drawn from (seed, epoch, rank), each shard's samples in an order drawn from the same generator; without
    `shuffle`, shards and samples in their stored order. With `even`, every rank stops after as many samples as
    the smallest rank holds (the samples left out are the last of this epoch's order: different ones each epoch).
    """
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    assignment = assign_files(counts, num_shards)
    mine = assignment[shard_id]
    rng = np.random.default_rng([_SALT, 1, seed, epoch, shard_id]) if shuffle else None
    files = [mine[i] for i in rng.permutation(len(mine))] if rng is not None else mine
    parts = [starts[f] + (rng.permutation(counts[f]) if rng is not None else np.arange(counts[f])) for f in files]
    order = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    if even:
        order = order[:min(rank_sample_counts(counts, num_shards))]
    return order


def rank_sample_counts(counts: tuple[int, ...] | list[int], num_shards: int) -> list[int]:
    """Samples each rank's tar shards (:func:`assign_files`) hold, by rank."""
    return [sum(counts[f] for f in files) for files in assign_files(counts, num_shards)]
