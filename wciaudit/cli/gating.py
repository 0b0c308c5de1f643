"""Gates on the command line, shared by ``scan`` and ``gate``: resolve the settings before
any work, then print the verdict, write the Markdown summary and choose the exit code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..formatting import fmt_estimate, format_eps, md_cell
from ..gate import GateCheck, GateConfig, apply_gates, load_baseline, load_gate_config
from ..result import AuditResult, Gate, write_atomic
from .common import EXIT_GATE_FAILED, err, out

_STATUS = {"pass": "pass", "within-noise": "within noise", "fail": "FAIL"}
_MD_STATUS = {"pass": "✅ pass", "within-noise": "⚠️ within noise", "fail": "❌ fail"}


@dataclass(frozen=True)
class GateSetup:
    """Gate settings resolved and checked before any work: the effective config, the
    config file it came from, the baseline result and where the Markdown summary goes."""

    config: GateConfig
    config_file: Path | None
    baseline: AuditResult | None
    summary_md: Path | None = None

    def apply(self, result: AuditResult) -> Gate:
        return apply_gates(result, self.config, self.baseline)


def prepare_gates(
    config_file: Path | None, summary_md: Path | None, thresholds: Mapping[str, Any]
) -> GateSetup:
    """The config file (given or found from the current folder upward) with the flag
    values ``thresholds`` on top (None: not given), and the baseline loaded.

    Raises:
        ConfigError: for a malformed config file, a bad flag or an unreadable baseline.
    """
    config, found = load_gate_config(Path.cwd(), path=config_file)
    config = config.updated(thresholds, "cli")
    return GateSetup(config, found, load_baseline(config), summary_md)


def report_gates(
    result: AuditResult, setup: GateSetup, *, quiet: bool, console: Console = out
) -> int:
    """Print the gate table (stdout), warnings and one line per failed gate (stderr), write
    the Markdown summary; return the exit code (0 or 1)."""
    gate = result.gate
    if gate.checks and not quiet:
        console.print(gate_table(gate))
        if setup.config_file is not None:
            console.print(f"thresholds from {setup.config_file} (flags override)", markup=False)
    if setup.baseline is not None and setup.config.max_wci_increase is None:
        _warn("--baseline given but no --max-wci-increase; the baseline is not used")
    for check in _checks(gate):
        for warning in check.warnings:
            _warn(f"{warning}; the WCI comparison may not mean much")
    for line in gate.failures:
        err.print(f"wciaudit: gate failed: {line}", markup=False, soft_wrap=True)
    if setup.summary_md is not None:
        write_atomic(setup.summary_md, render_markdown(result, setup.config.gate_sigmas))
    return 0 if gate.passed else EXIT_GATE_FAILED


def gate_table(gate: Gate) -> Table:
    """One row per check: gate, value ± SE, excess over the threshold (in SEs), status, source."""
    t = Table(title="Gates", show_edge=False)
    for col in ("gate", "value ± SE", "excess", "status", "source"):
        t.add_column(col, justify="right" if col in ("value ± SE", "excess") else "left")
    for c in _checks(gate):
        style = {"fail": "bold red", "within-noise": "yellow"}.get(c.status)
        status = f"[{style}]{_STATUS[c.status]}[/]" if style else _STATUS[c.status]
        t.add_row(_gate_text(c), _value(c), _margin(c), status, _source(c.source))
    return t


def render_markdown(result: AuditResult, sigmas: float) -> str:
    """A short Markdown summary for a pull-request comment or ``$GITHUB_STEP_SUMMARY``."""
    gate, m, pb = result.gate, result.metrics, result.pac_bayes
    lines = [f"### wciaudit: {_verdict(gate)}", "", " · ".join(_about(result)), ""]
    lines += ["| figure | value ± SE |", "|---|---:|"]
    figures = [
        ("WCI", result.wci, result.wci_se),
        ("robust acc (test)", m.robust_acc_test, m.robust_acc_test_se),
        ("robust acc (train)", m.robust_acc_train, m.robust_acc_train_se),
        ("robust loss gap", m.gap_loss, m.gap_loss_se),
        ("robust error gap", m.gap_err, m.gap_err_se),
        ("PAC-Bayes bound (2nd order)", pb.bound, None),
    ]
    lines += [f"| {name} | {fmt_estimate(v, se, missing='null')} |" for name, v, se in figures]
    if gate.checks:
        lines += ["", "| gate | value ± SE | excess | status | source |", "|---|---:|---:|---|---|"]
        lines += [
            f"| {md_cell(_gate_text(c))} | {_value(c)} | {_margin(c)} | "
            f"{_MD_STATUS[c.status]} | {md_cell(_source(c.source))} |"
            for c in _checks(gate)
        ]
        if gate.failures:
            lines.append("")
        lines += [f"- {md_cell(line)}" for line in gate.failures]
        lines += [
            "",
            f"A gate fails only when its figure is beyond the threshold by more than "
            f"{sigmas:g} standard errors; a smaller excess is reported as *within noise*.",
        ]
    return "\n".join(lines) + "\n"


def _verdict(gate: Gate) -> str:
    failed = len(gate.failures)
    if not gate.checks:
        return "❌ " + gate.failures[0] if failed else "no gates set"
    if failed:
        return f"❌ {failed} gate{'s' if failed > 1 else ''} failed"
    return "✅ all gates passed"


def _about(result: AuditResult) -> list[str]:
    """The checkpoint, data and threat model in a few words."""
    ck, ds, cfg = result.checkpoint, result.dataset, result.config
    about = [f"`{md_cell(Path(ck.path).name or '?')}`"]
    if ck.sha256:
        about.append(f"sha256 `{ck.sha256[:12]}`")
    if ds.name:
        about.append(f"data {md_cell(ds.name)} (train {ds.n_train}, test {ds.n_test})")
    if cfg.get("eps") is not None:
        about.append(
            f"{cfg.get('norm', 'linf')} eps={format_eps(cfg['eps'])} "
            f"{cfg.get('attack', '')}-{cfg.get('steps', '')}"
        )
    return about


def _checks(gate: Gate) -> list[GateCheck]:
    return [GateCheck.from_dict(c) for c in gate.checks]


def _warn(message: str) -> None:
    err.print(f"wciaudit: warning: {message}", markup=False, soft_wrap=True)


def _gate_text(check: GateCheck) -> str:
    if check.baseline_value is not None or check.option == "--max-wci-increase":
        tail = f" (= {check.limit:.4g})" if check.limit is not None else ""
        return f"{check.figure} <= baseline + {check.threshold_text or check.threshold}{tail}"
    return f"{check.figure} {check.op} {check.threshold:.4g}"


def _value(check: GateCheck) -> str:
    return fmt_estimate(check.value, check.se, missing="null")


def _margin(check: GateCheck) -> str:
    if check.margin_sigmas is not None:
        return f"{check.margin_sigmas:+.1f} SE"
    return "-" if check.excess is None else f"{check.excess:+.3g}"


def _source(source: str) -> str:
    return source if source in ("cli", "default") else Path(source).name
