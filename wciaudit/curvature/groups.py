"""The random groups the Hessian subset is split into (SPEC: What an SE covers).

Hutchinson draws one probe per group and the exact route sums its per-example traces
per group; the spread over groups is the subset's sampling error, and two runs on the
same examples (the attack's second seed) are paired group by group.
"""

from __future__ import annotations

import torch

__all__ = ["GROUPS", "GROUP_SIZE", "group_count", "probe_groups"]

# The examples are split into at most GROUPS random groups of at least GROUP_SIZE: G - 1
# = 15 degrees of freedom for the subset part of the SE, while each group's graph still
# holds enough examples that per-call overhead does not dominate (a group is one graph
# per round, so 16 groups of 62 cost about what 8 batches of 125 did).
GROUPS = 16
GROUP_SIZE = 4


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
