"""A scan's stages: their wall times, which finished, and the result as it stands after each.

:func:`wciaudit.scan` runs its stages (:data:`~wciaudit.result.STAGES`) inside
:meth:`Stages.stage`. After each stage but the last, the ``on_stage`` callback gets the
result as it would stand if the scan stopped then, assembled from the stages' values so
far (:func:`wciaudit.pipeline.assemble.assemble`): ``complete`` False, the
finished stages in ``stages``, the stage that runs next in ``stopped_at``, that stage's
figures and those of the stages after it null (never estimated), and a failed gate
block, so that nothing reading the file takes it for a scan that passed. The library
prints and writes nothing; the command line keeps the latest copy and writes it when a
signal stops the scan after its attack stage.

Example:
    >>> from wciaudit import scan
    >>> kept = []
    >>> result = scan("sample_models/digits_resnet_pgd.safetensors", "sample",
    ...               on_stage=lambda stage, partial: kept.append(partial))  # doctest: +SKIP
    >>> [(p.stages[-1], p.stopped_at) for p in kept]  # doctest: +SKIP
    [('data', 'attack'), ('attack', 'evaluate'), ('evaluate', 'curvature'), ('curvature', 'bound')]
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..result import STAGES, AuditResult, Gate, Timings

__all__ = ["StageCallback", "Stages"]

#: on_stage(stage, partial): ``stage`` just finished; ``partial`` is the incomplete result
StageCallback = Callable[[str, AuditResult], None]

#: the parts of the stages that a default scan spends its time on, timed inside them
#: (``Timings.parts_s``): the attack (PGD on both splits), the gradient-masking checks,
#: the traces, the attack-spread re-attack of the Hessian subset and its re-measure
PARTS = ("attack", "masking", "traces", "attack_spread", "spread_remeasure")

#: the Timings field of each stage that is timed
_TIMING_KEYS = {
    "load": "load_s",
    "data": "data_s",
    "attack": "attack_s",
    "evaluate": "eval_s",
    "curvature": "trace_s",
}


class Stages:
    """The bookkeeping of one scan's stages.

    Attributes:
        done: the stages that finished, in order.
        plan: the stages this scan runs (a scan without data stops after ``data``).
        build: assembles the result from the stages' values so far, once there is one
            to write (after the data stage; the callback needs it).
    """

    def __init__(self, on_stage: StageCallback | None) -> None:
        self.started = time.perf_counter()
        self.started_at = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        self.seconds: dict[str, float] = {}
        self.parts: dict[str, float] = {}
        self.done: list[str] = []
        self.plan: tuple[str, ...] = STAGES
        self.build: Callable[[], AuditResult] | None = None
        self._on_stage = on_stage

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block; when it ends without an exception, mark ``name`` finished and
        hand the incomplete result to the callback (unless ``name`` was the last stage)."""
        t0 = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t0
        self.done.append(name)
        upcoming = [s for s in self.plan if s not in self.done]
        if self._on_stage is not None and self.build is not None and upcoming:
            self._on_stage(name, self.incomplete(upcoming[0]))

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Time a part of a stage (one of :data:`PARTS`); a part run twice adds up."""
        t0 = time.perf_counter()
        yield
        self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t0

    def timings(self, *, incomplete: bool = False) -> Timings:
        """The wall times; a stage that did not run is 0 in a complete result and null in
        an incomplete one (it may have been running). ``parts_s`` holds the parts that
        ran, ``shares`` each part's fraction of the total and ``other``, the rest."""
        missing = None if incomplete else 0.0
        seconds = {key: self.seconds.get(stage, missing) for stage, key in _TIMING_KEYS.items()}
        total = time.perf_counter() - self.started
        parts = {name: self.parts[name] for name in PARTS if name in self.parts}
        shares = {name: t / total for name, t in parts.items()} if total > 0 else {}
        if shares:
            shares["other"] = max(0.0, 1.0 - sum(shares.values()))
        return Timings(
            **seconds, total_s=total, started_at=self.started_at, parts_s=parts, shares=shares
        )

    def incomplete(self, stopped_at: str) -> AuditResult:
        """The result as it stands, marked as stopped during ``stopped_at``."""
        assert self.build is not None
        partial = self.build()
        partial.complete, partial.stopped_at, partial.stages = False, stopped_at, list(self.done)
        partial.timings = self.timings(incomplete=True)
        reason = partial.incomplete_reason or ""
        partial.notes.append(reason)
        partial.gate = Gate(passed=False, failures=[reason])
        return partial
