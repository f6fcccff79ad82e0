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
