"""How many more probes (or labels) a noisy estimate gets after a round: one rule.

Every adaptive estimator here (Hutchinson's per-layer stop rule, the WCI-targeted
rounds, Hutch++'s residual probes, the sampled-label route's extra labels) grows its
sample the same way: to ``MARGIN`` times the count its running variance says is
needed, at least half again what it has (so a variance estimated low on few probes
cannot stall the rounds: the count at least grows geometrically), at least ``least``
more, and never past the cap.

Example:
    >>> more_probes(10, 40.0, 200), more_probes(10, 5.0, 200), more_probes(190, 1e9, 200)
    (34, 5, 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable

#: aim this far above the count the running variance says is needed: the variance
#: itself is an estimate, and one more round costs a pass over the graph
MARGIN = 1.1
#: the fewest more probes a round adds (a round has a fixed cost of its own)
LEAST = 4


def more_probes(
    have: int,
    needed: float,
    cap: int,
    *,
    least: int = LEAST,
    half: Callable[[float], int] = math.ceil,
) -> int:
    """max(MARGIN * needed - have, half(have / 2), least), rounded up, at most cap - have.

    Args:
        have: probes (or labels) so far.
        needed: the count at which the running variance meets the target (may be inf).
        cap: the most the estimate may have.
        least: the fewest to add.
        half: how "half again" rounds: ``math.ceil`` (Hutchinson's rounds) or
            ``math.floor`` (Hutch++ and the sampled labels, as they were written).
    """
    extra = max(MARGIN * needed - have, half(have / 2), least)
    return int(math.ceil(min(extra, cap - have)))


def short_of(have: int, needed: float) -> bool:
    """Does ``have`` fall short of MARGIN times ``needed``, rounded up?"""
    return not math.isfinite(needed) or math.ceil(MARGIN * needed) > have
