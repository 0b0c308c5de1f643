"""Gates: thresholds on a result's figures -> pass/fail with reasons (SPEC: exit codes).

A gate compares one figure of an :class:`~wciaudit.result.AuditResult` with a threshold.
Every figure is an estimate with a standard error (SE), so a gate must not flap on noise:

    excess = value - threshold        (a "max" gate; threshold - value for a "min" gate)
    fail         iff excess > sigmas * SE
    within noise iff 0 < excess <= sigmas * SE   (passes, and the report says so)
    pass         iff excess <= 0

``sigmas`` is ``--gate-sigmas`` (default 2). A figure whose SE is unknown (the PAC-Bayes
bound has none) is taken with SE 0, so any excess fails; the message says so. A figure
that is null (not measured, e.g. no test split) fails its gate: CI asked for a check that
cannot be made.

The baseline gate ``max_wci_increase`` compares WCI with a baseline result's WCI:
``limit = base * (1 + r)`` for a relative increase ``"10%"``, ``limit = base + a`` for an
absolute one; the SE of ``value - limit`` is ``hypot(se, (1 + r) * base_se)`` (``r = 0``
for an absolute increase), the two scans being independent.

Thresholds come from ``[tool.wciaudit]`` in ``pyproject.toml`` or from a ``wciaudit.toml``
(keys at the top level), found from a folder upward; command-line flags override them.

Example:
    >>> from wciaudit.result import AuditResult
    >>> result = AuditResult(wci=12.3, wci_se=0.4)
    >>> gate = apply_gates(result, GateConfig(max_wci=10.0))
    >>> gate.passed, gate.failures[0]
    (False, 'wci = 12.3 ± 0.4 exceeds --max-wci 10 by 5.8 SE (limit 2 SE)')
    >>> apply_gates(AuditResult(wci=10.5, wci_se=0.4), GateConfig(max_wci=10.0)).checks[0]["status"]
    'within-noise'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .formatting import fmt_estimate, fmt_num, fmt_pm, fmt_sigmas, format_eps
from .gate_config import (
    CONFIG_FILES,
    CONFIG_KEYS,
    DEFAULT_SIGMAS,
    THRESHOLDS,
    GateConfig,
    Increase,
    find_config_file,
    load_baseline,
    load_gate_config,
    parse_increase,
    read_config_file,
)
from .result import AuditResult, Gate

# the config half lives in :mod:`wciaudit.gate_config`; its names are re-exported here
__all__ = [
    "CONFIG_FILES",
    "CONFIG_KEYS",
    "DEFAULT_SIGMAS",
    "THRESHOLDS",
    "GateCheck",
    "GateConfig",
    "Increase",
    "apply_gates",
    "check_gates",
    "figure_value",
    "find_config_file",
    "load_baseline",
    "load_gate_config",
    "masking_gate",
    "noise_verdict",
    "parse_increase",
    "read_config_file",
]

_COMPARABLE = ("eps", "norm", "attack", "steps", "restarts", "hessian_samples")


def noise_verdict(excess: float, se: float, sigmas: float) -> str:
    """``"pass"``, ``"within-noise"`` or ``"fail"`` for a figure ``excess`` beyond its
    threshold (positive: on the wrong side) with standard error ``se``.

    Fails iff ``excess > sigmas * se``; a positive excess within that is noise.
    """
    if excess <= 0:
        return "pass"
    return "fail" if excess > sigmas * se else "within-noise"


def figure_value(result: AuditResult, figure: str) -> tuple[float | None, float | None]:
    """A gated figure of ``result`` and its SE (None where not reported)."""
    m = result.metrics
    if figure == "wci":
        return result.wci, result.wci_se
    if figure == "bound":
        return result.pac_bayes.bound, None
    if figure in ("gap_loss", "gap_err", "robust_acc_test"):
        return getattr(m, figure), getattr(m, f"{figure}_se")
    raise KeyError(figure)


@dataclass(frozen=True)
class GateCheck:
    """One threshold checked against one figure of a result.

    Attributes:
        figure: the figure checked (``wci``, ``gap_loss``, ``gap_err``,
            ``robust_acc_test``, ``bound``).
        op: ``"<="`` for a maximum, ``">="`` for a minimum.
        option: the command-line flag that sets the threshold (``--max-wci``).
        threshold: the threshold as given (for ``--max-wci-increase``: the amount).
        value, se: the figure and its standard error (None: not measured / no SE).
        status: ``pass``, ``within-noise`` or ``fail`` (:func:`noise_verdict`).
        message: the reason, one line; for a failure the line CI prints.
        source: ``cli``, ``default`` or the config file the threshold came from.
        sigmas: how many SEs beyond the threshold a figure must be to fail.
        margin_sigmas: the excess in SEs (None without an SE or a value).
        excess: how far the value is on the wrong side of the limit (None: no value).
        threshold_text, limit, se_diff: the baseline gate's threshold as text, the WCI
            limit it implies and the SE of ``value - limit``.
        baseline, baseline_value, baseline_se, relative, warnings: the baseline gate's
            baseline file, its WCI ± SE, whether the increase is relative, and the
            settings that differ between the two scans.
        sigmas_source: where ``sigmas`` came from (``cli``, ``default`` or a file).
    """

    figure: str
    op: str
    option: str
    threshold: float
    value: float | None
    se: float | None
    status: str = "fail"
    message: str = ""
    source: str = "default"
    sigmas: float = DEFAULT_SIGMAS
    margin_sigmas: float | None = None
    excess: float | None = None
    threshold_text: str | None = None
    limit: float | None = None
    se_diff: float | None = None
    baseline: str | None = None
    baseline_value: float | None = None
    baseline_se: float | None = None
    relative: bool | None = None
    warnings: tuple[str, ...] = ()
    sigmas_source: str | None = None

    @property
    def passed(self) -> bool:
        """True unless the check failed (a figure within noise passes)."""
        return self.status != "fail"

    @property
    def is_baseline(self) -> bool:
        """True for the ``--max-wci-increase`` check against a baseline result."""
        return self.relative is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON ``gate.checks`` entry: every key always, optional ones when set."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("excess", "threshold_text", "limit", "se_diff", "sigmas_source"):
            if out[key] is None:
                del out[key]
        if self.is_baseline:
            out["warnings"] = list(self.warnings)
        else:
            for key in ("baseline", "baseline_value", "baseline_se", "relative", "warnings"):
                del out[key]
        out["passed"] = self.passed
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateCheck:
        """A check read back from JSON; unknown keys are ignored, missing ones default."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values.setdefault("figure", str(d.get("name") or "check"))
        values.setdefault("op", "")
        values.setdefault("option", "")
        values.setdefault("threshold", None)
        values.setdefault("value", None)
        values.setdefault("se", None)
        if "status" not in d and "passed" in d:
            values["status"] = "pass" if d["passed"] else "fail"
        values["warnings"] = tuple(map(str, d.get("warnings") or ()))
        return cls(**values)

    def row(self) -> dict[str, Any]:
        """The check as the report's table shows it: name, rule, value ± SE, status."""
        threshold = self.threshold_text or (
            fmt_num(self.threshold) if isinstance(self.threshold, (int, float)) else self.threshold
        )
        value = self.value
        shown = fmt_pm(value, self.se) if isinstance(value, (int, float)) else ""
        detail = "; ".join([self.message, *self.warnings]).strip("; ")
        return {
            "name": self.option or self.figure,
            "figure": self.figure,
            "rule": f"{self.op} {threshold}".strip() if threshold is not None else "",
            "value": shown if value is not None else "",
            "status": self.status,
            "failed": self.status == "fail",
            "detail": detail,
        }


def apply_gates(
    result: AuditResult, config: GateConfig, baseline: AuditResult | None = None
) -> Gate:
    """Check every threshold ``config`` sets against ``result`` (SPEC exit codes: a
    failure means exit 1).

    Returns:
        A :class:`Gate` whose ``checks`` hold one :meth:`GateCheck.to_dict` per
        threshold and whose ``failures`` hold one line per failed check; for an
        incomplete result (a stopped scan), or an incomplete baseline the WCI increase
        is taken against, a failed gate with one line and no checks.

    Raises:
        ConfigError: when ``max_wci_increase`` is set and ``baseline`` is None.
    """
    if not result.complete:
        # a stopped scan lacks figures; checking what it has would pass it on half an audit
        return Gate(passed=False, failures=[f"{result.incomplete_reason}; gates need a whole scan"])
    if baseline is not None and not baseline.complete and config.max_wci_increase is not None:
        return Gate(passed=False, failures=[f"the baseline is an {baseline.incomplete_reason}"])
    checks = [c.to_dict() for c in check_gates(result, config, baseline)]
    failures = [c["message"] for c in checks if c["status"] == "fail"]
    return Gate(passed=not failures, failures=failures, checks=checks)


def check_gates(
    result: AuditResult, config: GateConfig, baseline: AuditResult | None = None
) -> list[GateCheck]:
    """One :class:`GateCheck` per threshold ``config`` sets, in :data:`THRESHOLDS` order,
    then the masking gate, the baseline gate last.

    Raises:
        ConfigError: when ``max_wci_increase`` is set and ``baseline`` is None.
    """
    checks = []
    for key, (figure, op, option) in THRESHOLDS.items():
        threshold = getattr(config, key)
        if threshold is None:
            continue
        value, se = figure_value(result, figure)
        check = _check(
            GateCheck(
                figure,
                op,
                option,
                threshold,
                value,
                se,
                source=config.source(key),
                sigmas=config.gate_sigmas,
                sigmas_source=config.source("gate_sigmas"),
            )
        )
        if value is None:
            reason = f"{figure} is null ({_null_reason(result, figure)}): cannot check {option}"
            check = replace(check, message=reason)
        checks.append(check)
    if config.fail_on_masking:
        checks.append(masking_gate(result, config))
    if config.max_wci_increase is not None:
        if baseline is None:
            raise ConfigError("max_wci_increase needs a baseline result")
        checks.append(_increase_check(result, baseline, config))
    return checks


def masking_gate(result: AuditResult, config: GateConfig) -> GateCheck:
    """``--fail-on-masking``: the number of failed gradient-masking checks must be 0.

    The checks are those the scan ran and saved (``attacks.masking.checks``, the
    random-output check among them); a skipped check (``passed`` null) is not a failure.
    A result without them (a weights-only scan) fails, like a null figure.

    Example:
        >>> from wciaudit.result import AttackInfo
        >>> checks = [{"name": "large-eps", "passed": False}, {"name": "square", "passed": None}]
        >>> r = AuditResult(attacks=AttackInfo(masking={"checks": checks}))
        >>> masking_gate(r, GateConfig(fail_on_masking=True)).message
        'gradient masking suspected: large-eps failed (--fail-on-masking)'
    """
    masking = result.attacks.masking
    option, source = "--fail-on-masking", config.source("fail_on_masking")
    check = GateCheck("masking_checks_failed", "<=", option, 0, None, None, source=source)
    if not masking or not masking.get("checks"):
        reason = _null_reason(result, "masking")
        return replace(
            check, message=f"no gradient-masking checks ({reason}): cannot check {option}"
        )
    checks = masking["checks"]
    failed = [str(c.get("name")) for c in checks if c.get("passed") is False]
    ran = sum(c.get("passed") is not None for c in checks)
    if failed:
        message = f"gradient masking suspected: {', '.join(failed)} failed ({option})"
    else:
        message = f"no gradient-masking check failed ({ran} of {len(checks)} ran)"
    status = "fail" if failed else "pass"
    return replace(check, value=len(failed), status=status, excess=len(failed), message=message)


# -- helpers --------------------------------------------------------------------------------


def _check(check: GateCheck, se_test: float | None = None) -> GateCheck:
    """``check`` with its verdict and message. ``check.se`` is the figure's SE (shown);
    ``se_test`` the SE of the excess (default ``check.se``; for a baseline gate, the SE
    of the difference); ``check.limit`` the limit (default the threshold)."""
    if check.value is None:
        return check
    limit = check.threshold if check.limit is None else check.limit
    se_test = check.se if se_test is None else se_test
    excess = check.value - limit if check.op == "<=" else limit - check.value
    se_used = se_test if se_test is not None and math.isfinite(se_test) else 0.0
    status = noise_verdict(excess, se_used, check.sigmas)
    margin = excess / se_used if se_used > 0 else None
    shown = check.threshold_text or fmt_estimate(check.threshold)
    if check.source not in ("cli", "default"):
        shown += f" (from {Path(check.source).name})"
    figure_text = f"{check.figure} = {fmt_estimate(check.value, check.se)}"
    if status == "pass":
        message = f"{figure_text} within {check.option} {shown}"
    else:
        head = (
            f"{figure_text} {'exceeds' if check.op == '<=' else 'is below'} {check.option} {shown}"
        )
        if margin is None:
            why = "no SE, taken as 0" if se_test is None else "SE 0"
            message = f"{head} by {fmt_estimate(excess)} ({why}: any excess fails)"
        else:
            noise = ": within noise" if status == "within-noise" else ""
            message = f"{head} by {fmt_sigmas(margin)} SE{noise} (limit {check.sigmas:g} SE)"
    return replace(check, status=status, margin_sigmas=margin, excess=excess, message=message)


def _increase_check(result: AuditResult, baseline: AuditResult, config: GateConfig) -> GateCheck:
    inc = config.max_wci_increase
    assert inc is not None  # checked by the caller
    option = "--max-wci-increase"
    value, se = result.wci, result.wci_se
    base, base_se = baseline.wci, baseline.wci_se
    check = GateCheck(
        "wci",
        "<=",
        option,
        inc.amount,
        value,
        se,
        source=config.source("max_wci_increase"),
        sigmas=config.gate_sigmas,
        sigmas_source=config.source("gate_sigmas"),
        baseline=str(config.baseline) if config.baseline else None,
        baseline_value=base,
        baseline_se=base_se,
        relative=inc.relative,
        threshold_text=str(inc),
        warnings=tuple(_incomparable(result, baseline)),
    )
    if value is None or base is None:
        which = "wci" if value is None else "baseline wci"
        reason = _null_reason(result if value is None else baseline, "wci")
        return replace(
            check, value=None, message=f"{which} is null ({reason}): cannot check {option}"
        )
    limit = inc.limit(base)
    scale = (1.0 + inc.amount) if inc.relative else 1.0
    se_diff = (
        None if se is None and base_se is None else math.hypot(se or 0.0, scale * (base_se or 0.0))
    )
    text = f"{inc} over baseline {fmt_estimate(base, base_se)} (limit {fmt_estimate(limit)})"
    checked = _check(replace(check, limit=limit, threshold_text=text), se_test=se_diff)
    return replace(checked, threshold_text=str(inc), se_diff=se_diff)


def _incomparable(result: AuditResult, baseline: AuditResult) -> list[str]:
    """Settings that differ between the two scans: their WCIs are not comparable."""
    notes = []
    for key in _COMPARABLE:
        a, b = result.config.get(key), baseline.config.get(key)
        if a is not None and b is not None and a != b:
            # eps as the user writes it (8/255), not as 0.03137254901960784
            shown = (format_eps(a), format_eps(b)) if key == "eps" else (repr(a), repr(b))
            notes.append(f"{key} differs from the baseline ({shown[0]} vs {shown[1]})")
    if (
        result.dataset.name
        and baseline.dataset.name
        and result.dataset.name != baseline.dataset.name
    ):
        notes.append(
            f"dataset differs from the baseline ({result.dataset.name!r} vs {baseline.dataset.name!r})"
        )
    return notes


def _null_reason(result: AuditResult, figure: str) -> str:
    ds = result.dataset
    if not ds.n_train and not ds.n_test:
        return "no data: weights-only scan"
    if figure == "masking":
        return "not in the result"
    if figure in ("gap_loss", "gap_err", "robust_acc_test") and not ds.n_test:
        return "no test split"
    if figure in ("gap_loss", "gap_err") and not ds.n_train:
        return "no train split"
    return "not measured"
