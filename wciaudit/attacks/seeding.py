"""Per-example random draws: example i's draw depends only on (key, global index i).

Every random start of every attack is drawn from a CPU generator seeded by a hash of
the attack's key (seed, stream, restart, ...) and the example's global index in its
split. So the same seed gives the same starts whatever the batch size, the device, the
subset of examples still being attacked, or the number of processes under torchrun.

The hash is SplitMix64 (Steele, Lea, Flood 2014) applied in a chain, which maps distinct
integer tuples to well-spread 63-bit seeds (a linear mix such as ``a * p + b`` would
collide: restart 1 of example 0 against restart 0 of example p).

Example:
    >>> a = per_example_uniform((4, 3), range(10, 14), key=(0, 1, 2))
    >>> b = per_example_uniform((2, 3), [11, 13], key=(0, 1, 2))
    >>> torch.equal(a[[1, 3]], b)
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

_MASK = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _chain(values: Iterable[int]) -> int:
    """SplitMix64 applied in a chain over ``values``: a 64-bit hash (order matters)."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK))
    return h


def mix(*values: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (order matters)."""
    return _chain(values) >> 1


def example_generators(seed: int, indices: torch.Tensor, *key: int) -> list[torch.Generator]:
    """One CPU generator per example, seeded by a hash of (seed, global index, *key).

    What example i draws depends only on its global index ``indices[i]``, the seed and
    the key (which attack, iteration chunk, restart, ...), never on its batch.
    """
    gens = []
    for index in indices.tolist():
        g = torch.Generator(device="cpu")
        g.manual_seed(_chain((seed, int(index), *key)))
        gens.append(g)
    return gens


def _indices(indices: Iterable[int] | torch.Tensor) -> list[int]:
    if isinstance(indices, torch.Tensor):
        return [int(i) for i in indices.reshape(-1).tolist()]
    return [int(i) for i in indices]


def _draw(
    shape: Sequence[int], indices: Iterable[int] | torch.Tensor, key: Sequence[int], normal: bool
) -> torch.Tensor:
    idx = _indices(indices)
    if len(idx) != shape[0]:
        raise ValueError(f"{len(idx)} indices for {shape[0]} examples")
    rest = tuple(int(s) for s in shape[1:])
    out = torch.empty((len(idx), *rest))
    g = torch.Generator(device="cpu")
    base = mix(*key)
    for row, i in enumerate(idx):
        g.manual_seed(mix(base, i))
        if normal:
            torch.randn(rest, generator=g, out=out[row])
        else:
            torch.rand(rest, generator=g, out=out[row])
    return out


def per_example_uniform(
    shape: Sequence[int], indices: Iterable[int] | torch.Tensor, key: Sequence[int]
) -> torch.Tensor:
    """Uniform [0, 1) draws, float32 on the CPU, one row per global example index.

    Args:
        shape: (N, ...) the shape of the draw.
        indices: the N global indices of the rows.
        key: integers naming the draw (attack tag, seed, stream, restart, ...).
    """
    return _draw(shape, indices, key, normal=False)


def per_example_normal(
    shape: Sequence[int], indices: Iterable[int] | torch.Tensor, key: Sequence[int]
) -> torch.Tensor:
    """Standard normal draws, float32 on the CPU, one row per global example index."""
    return _draw(shape, indices, key, normal=True)


def global_indices(
    n: int, indices: torch.Tensor | None = None, index_offset: int = 0
) -> torch.Tensor:
    """The global index of each of n examples: ``indices`` as given (a subset of a
    split), else index_offset, ..., index_offset + n - 1 (a contiguous shard).

    Raises:
        ValueError: ``indices`` does not hold one index per example.
    """
    if indices is None:
        return torch.arange(index_offset, index_offset + n)
    indices = torch.as_tensor(indices).reshape(-1).cpu().long()
    if indices.shape[0] != n:
        raise ValueError(f"{indices.shape[0]} indices for {n} examples")
    return indices
