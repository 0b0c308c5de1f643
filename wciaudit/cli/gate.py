"""``wciaudit gate``: apply gates to a saved result; the gate options ``scan`` shares.

A pipeline scans once and gates many times: ``wciaudit gate result.json --max-wci 150``
reads the JSON result, applies the thresholds (flags over ``[tool.wciaudit]`` /
``wciaudit.toml``), prints a table, one line per failed gate on stderr, and exits 0 when
every gate passed, 1 when one failed, 2 on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..config import format_eps
from ..errors import ConfigError
from ..gate import GateConfig, apply_gates, load_baseline, load_gate_config
from ..result import AuditResult, Gate, write_atomic
from .common import EXIT_GATE_FAILED, QuietOpt, err, handle_errors, out

_PANEL = "Gates (exit 1 when one fails)"

MaxWciOpt = Annotated[float | None, typer.Option("--max-wci", help="Fail when WCI exceeds this by more than --gate-sigmas SE.", rich_help_panel=_PANEL, show_default=False)]
MaxGapLossOpt = Annotated[float | None, typer.Option("--max-gap-loss", help="Fail when the robust loss gap L_adv(T) - L_adv(S) exceeds this.", rich_help_panel=_PANEL, show_default=False)]
MaxGapErrOpt = Annotated[float | None, typer.Option("--max-gap-err", help="Fail when the robust error gap robust_acc(S) - robust_acc(T) exceeds this.", rich_help_panel=_PANEL, show_default=False)]
MinRobustAccOpt = Annotated[float | None, typer.Option("--min-robust-acc", help="Fail when the robust accuracy on the test split is below this fraction (0-1).", rich_help_panel=_PANEL, show_default=False)]
MaxBoundOpt = Annotated[float | None, typer.Option("--max-bound", help="Fail when the PAC-Bayes bound exceeds this (no SE: any excess fails).", rich_help_panel=_PANEL, show_default=False)]
MaxWciIncreaseOpt = Annotated[str | None, typer.Option("--max-wci-increase", help="Fail when WCI exceeds the baseline's by more than this: '10%' (relative) or 0.5 (absolute). Needs --baseline.", rich_help_panel=_PANEL, show_default=False)]
BaselineOpt = Annotated[Path | None, typer.Option("--baseline", help="A baseline JSON result for --max-wci-increase.", dir_okay=False, rich_help_panel=_PANEL, show_default=False)]
GateSigmasOpt = Annotated[float | None, typer.Option("--gate-sigmas", help="A gate fails only when the figure is beyond its threshold by more than this many standard errors (default 2).", rich_help_panel=_PANEL, show_default=False)]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Read thresholds from this wciaudit.toml or pyproject.toml (default: the first one found from the current folder upward).", dir_okay=False, rich_help_panel=_PANEL, show_default=False)]
SummaryMdOpt = Annotated[Path | None, typer.Option("--summary-md", help="Write a Markdown summary (figures and gates) here, e.g. \"$GITHUB_STEP_SUMMARY\".", dir_okay=False, rich_help_panel=_PANEL, show_default=False)]

_STATUS = {"pass": "pass", "within-noise": "within noise", "fail": "FAIL"}
_MD_STATUS = {"pass": "✅ pass", "within-noise": "⚠️ within noise", "fail": "❌ fail"}


@dataclass(frozen=True)
class GateSetup:
    """Gate settings resolved and checked before any work: config, its file, baseline."""

    config: GateConfig
    config_file: Path | None
    baseline: AuditResult | None

    def apply(self, result: AuditResult) -> Gate:
        gate = apply_gates(result, self.config, self.baseline)
        sigmas_source = self.config.source("gate_sigmas")
        for check in gate.checks:
            check["sigmas_source"] = sigmas_source
        return gate


def prepare_gates(
    *, config_file: Path | None, baseline: Path | None, max_wci: float | None,
    max_gap_loss: float | None, max_gap_err: float | None, min_robust_acc: float | None,
    max_bound: float | None, max_wci_increase: str | None, gate_sigmas: float | None,
) -> GateSetup:
    """Config file (given or discovered) with the flags on top, and the baseline loaded.

    Raises:
        ConfigError: for a malformed config file, a bad flag or an unreadable baseline.
    """
    config, found = load_gate_config(Path.cwd(), path=config_file)
    config = config.updated(
        {"max_wci": max_wci, "max_gap_loss": max_gap_loss, "max_gap_err": max_gap_err,
         "min_robust_acc": min_robust_acc, "max_bound": max_bound,
         "max_wci_increase": max_wci_increase, "gate_sigmas": gate_sigmas, "baseline": baseline},
        "cli",
    )
    return GateSetup(config, found, load_baseline(config))


def check_output(path: Path | None) -> None:
    """Fail early (exit 2, before any work) when an output's folder does not exist."""
    if path is not None and not path.parent.is_dir():
        raise ConfigError(f"output folder does not exist: {path.parent}")


def report_gates(
    result: AuditResult, setup: GateSetup, *, summary_md: Path | None, quiet: bool,
    console: Console = out,
) -> int:
    """Print the gate table (stdout), warnings and one line per failed gate (stderr), write
    the Markdown summary; return the exit code (0 or 1)."""
    gate = result.gate
    if gate.checks and not quiet:
        console.print(gate_table(gate))
        if setup.config_file is not None:
            console.print(f"thresholds from {setup.config_file} (flags override)", markup=False)
    if setup.baseline is not None and setup.config.max_wci_increase is None:
        err.print("wciaudit: warning: --baseline given but no --max-wci-increase; the baseline is not used", markup=False, soft_wrap=True)
    for check in gate.checks:
        for warning in check.get("warnings") or []:
            err.print(f"wciaudit: warning: {warning}; the WCI comparison may not mean much", markup=False, soft_wrap=True)
    for line in gate.failures:
        err.print(f"wciaudit: gate failed: {line}", markup=False, soft_wrap=True)
    if summary_md is not None:
        write_atomic(summary_md, render_markdown(result, setup.config.gate_sigmas))
    return 0 if gate.passed else EXIT_GATE_FAILED


def gate_table(gate: Gate) -> Table:
    """One row per check: gate, value ± SE, excess over the threshold (in SEs), status, source."""
    t = Table(title="Gates", show_edge=False)
    for col in ("gate", "value ± SE", "excess", "status", "source"):
        t.add_column(col, justify="right" if col in ("value ± SE", "excess") else "left")
    for c in gate.checks:
        style = {"fail": "bold red", "within-noise": "yellow"}.get(c["status"])
        t.add_row(_gate_text(c), _pm(c["value"], c["se"]), _margin(c),
                  f"[{style}]{_STATUS[c['status']]}[/]" if style else _STATUS[c["status"]],
                  _source(c["source"]))
    return t


def render_markdown(result: AuditResult, sigmas: float) -> str:
    """A short Markdown summary for a pull-request comment or ``$GITHUB_STEP_SUMMARY``."""
    gate, m, pb = result.gate, result.metrics, result.pac_bayes
    failed = len(gate.failures)
    if not gate.checks:
        verdict = "no gates set"
    elif failed:
        verdict = f"❌ {failed} gate{'s' if failed > 1 else ''} failed"
    else:
        verdict = "✅ all gates passed"
    ck, ds, cfg = result.checkpoint, result.dataset, result.config
    lines = [f"### wciaudit: {verdict}", ""]
    about = [f"`{_md(Path(ck.path).name or '?')}`"]
    if ck.sha256:
        about.append(f"sha256 `{ck.sha256[:12]}`")
    if ds.name:
        about.append(f"data {_md(ds.name)} (train {ds.n_train}, test {ds.n_test})")
    if cfg.get("eps") is not None:
        about.append(f"{cfg.get('norm', 'linf')} eps={format_eps(cfg['eps'])} {cfg.get('attack', '')}-{cfg.get('steps', '')}")
    lines += [" · ".join(about), "", "| figure | value ± SE |", "|---|---:|"]
    figures = [
        ("WCI", result.wci, result.wci_se),
        ("robust acc (test)", m.robust_acc_test, m.robust_acc_test_se),
        ("robust acc (train)", m.robust_acc_train, m.robust_acc_train_se),
        ("robust loss gap", m.gap_loss, m.gap_loss_se),
        ("robust error gap", m.gap_err, m.gap_err_se),
        ("PAC-Bayes bound (2nd order)", pb.bound, None),
    ]
    lines += [f"| {name} | {_pm(value, se)} |" for name, value, se in figures]
    if gate.checks:
        lines += ["", "| gate | value ± SE | excess | status | source |", "|---|---:|---:|---|---|"]
        for c in gate.checks:
            lines.append(
                f"| {_md(_gate_text(c))} | {_pm(c['value'], c['se'])} | {_margin(c)} | "
                f"{_MD_STATUS[c['status']]} | {_md(_source(c['source']))} |"
            )
        if gate.failures:
            lines.append("")
        lines += [f"- {_md(line)}" for line in gate.failures]
        lines += [
            "",
            f"A gate fails only when its figure is beyond the threshold by more than "
            f"{sigmas:g} standard errors; a smaller excess is reported as *within noise*.",
        ]
    return "\n".join(lines) + "\n"


@handle_errors
def gate(
    result_path: Annotated[Path, typer.Argument(metavar="RESULT", help="A JSON result written by wciaudit scan.", dir_okay=False, show_default=False)],
    max_wci: MaxWciOpt = None,
    max_gap_loss: MaxGapLossOpt = None,
    max_gap_err: MaxGapErrOpt = None,
    min_robust_acc: MinRobustAccOpt = None,
    max_bound: MaxBoundOpt = None,
    baseline: BaselineOpt = None,
    max_wci_increase: MaxWciIncreaseOpt = None,
    gate_sigmas: GateSigmasOpt = None,
    config_file: ConfigOpt = None,
    summary_md: SummaryMdOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the result with its new gate block here.", dir_okay=False, show_default=False)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Apply gates to a saved result without recomputing: exit 0 pass, 1 a gate failed, 2 bad input."""
    check_output(summary_md)
    check_output(json_path)
    result = AuditResult.load(result_path)
    setup = prepare_gates(
        config_file=config_file, baseline=baseline, max_wci=max_wci, max_gap_loss=max_gap_loss,
        max_gap_err=max_gap_err, min_robust_acc=min_robust_acc, max_bound=max_bound,
        max_wci_increase=max_wci_increase, gate_sigmas=gate_sigmas,
    )
    if not setup.config.has_gates:
        # passing with nothing checked would hide a misplaced config file in CI
        raise ConfigError(
            "no gate set: give a threshold such as --max-wci, or put them under [tool.wciaudit] "
            "in pyproject.toml or in wciaudit.toml"
        )
    result.gate = setup.apply(result)
    if json_path is not None:
        result.save(json_path)
    code = report_gates(result, setup, summary_md=summary_md, quiet=quiet)
    if code:
        raise typer.Exit(code)


# -- formatting -----------------------------------------------------------------------------


def _gate_text(check: dict[str, Any]) -> str:
    if check.get("baseline_value") is not None or check["option"] == "--max-wci-increase":
        limit = check.get("limit")
        tail = f" (= {limit:.4g})" if limit is not None else ""
        return f"{check['figure']} <= baseline + {check.get('threshold_text', check['threshold'])}{tail}"
    return f"{check['figure']} {check['op']} {check['threshold']:.4g}"


def _margin(check: dict[str, Any]) -> str:
    margin = check.get("margin_sigmas")
    if margin is not None:
        return f"{margin:+.1f} SE"
    excess = check.get("excess")
    return "-" if excess is None else f"{excess:+.3g}"


def _pm(value: float | None, se: float | None) -> str:
    if value is None:
        return "null"
    return f"{value:.4g} ± {se:.2g}" if se is not None else f"{value:.4g}"


def _source(source: str) -> str:
    return source if source in ("cli", "default") else Path(source).name


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
