"""The random groups the Hessian subset is split into (SPEC: What an SE covers).

Hutchinson draws one probe per group and the exact route sums its per-example traces
per group; the spread over groups is the subset's sampling error, and two runs on the
same examples (the attack's second seed) are paired group by group.
"""

from __future__ import annotations

import torch

__all__ = [
    "GROUPS",
    "GROUP_SIZE",
    "SHARE_GROUPS",
    "common_groups",
    "fold_shares",
    "group_count",
    "probe_groups",
    "share_group_count",
    "share_groups",
]

# The examples are split into at most GROUPS random groups of at least GROUP_SIZE: G - 1
# = 15 degrees of freedom for the subset part of the SE, while each group's graph still
# holds enough examples that per-call overhead does not dominate (a group is one graph
# per round, so 16 groups of 62 cost about what 8 batches of 125 did).
GROUPS = 16
GROUP_SIZE = 4
# The routes whose group shares cost nothing (exact and sampled-label Gauss-Newton keep
# per-example values) split the examples into up to SHARE_GROUPS finer groups, nested in
# the G groups: the subset and attack-start parts of WCI's SE then rest on up to 255
# degrees of freedom instead of 15. With heavy-tailed per-example traces 15 left the SE
# itself so noisy that its median sat 20-30 % below the seed-to-seed sd (docs/spec.md).
SHARE_GROUPS = 256


def group_count(n: int, groups: int = GROUPS) -> int:
    """G = min(groups, n // GROUP_SIZE), at least 1."""
    return max(1, min(groups, n // GROUP_SIZE))


def probe_groups(n: int, groups: int, seed: int) -> torch.Tensor:
    """Group of each of n examples: a seeded random partition into
    :func:`group_count` groups whose sizes differ by at most one (example i goes to
    perm[i] mod G), whatever the order of the examples."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed * 1_000_003 + 17)
    return torch.randperm(n, generator=g) % group_count(n, groups)


def share_group_count(n: int, groups: int = GROUPS) -> int:
    """Fine groups of the share routes: a multiple of G = :func:`group_count` (so each
    fine group lies in one group), at most ``SHARE_GROUPS`` and about n / 2.

    Example:
        >>> share_group_count(1000), share_group_count(100), share_group_count(40)
        (256, 48, 20)
    """
    coarse = group_count(n, groups)
    return coarse * max(1, min(SHARE_GROUPS // coarse, n // (2 * coarse)))


def share_groups(n: int, seed: int, groups: int = GROUPS) -> torch.Tensor:
    """Fine group of each of n examples: perm[i] mod :func:`share_group_count`, with the
    permutation of :func:`probe_groups`, so fine group j lies in group j mod G."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed * 1_000_003 + 17)
    return torch.randperm(n, generator=g) % share_group_count(n, groups)


def fold_shares(shares: tuple[float, ...] | list[float], groups: int) -> list[float]:
    """Fine group shares summed into the ``groups`` groups they lie in (j -> j mod G);
    shares already in ``groups`` groups come back as they are."""
    out = [0.0] * groups
    for j, s in enumerate(shares):
        out[j % groups] += s
    return out


def common_groups(lengths: set[int], n: int, seed: int) -> tuple[int, torch.Tensor | None]:
    """The groups several layers' shares can be combined over, and each example's group.

    Args:
        lengths: the lengths of the layers' ``group_shares``.
        n, seed: the examples and the seed the shares were taken with.

    Returns:
        The fine groups of :func:`share_groups` when every layer has them (exact and
        sampled-label routes), else the G groups of :func:`probe_groups`, fine shares
        to be folded into them (:func:`fold_shares`); (0, None) when some layer has
        neither.
    """
    fine, coarse = share_group_count(n), group_count(n)
    if lengths == {fine}:
        return fine, share_groups(n, seed)
    if lengths and lengths <= {fine, coarse}:
        return coarse, probe_groups(n, coarse, seed)
    return 0, None
