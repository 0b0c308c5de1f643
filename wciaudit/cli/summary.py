"""The human summary of a result, printed by ``scan`` (rich tables on stdout)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..formatting import fmt_estimate, format_eps
from ..result import AuditResult


def fmt(value: float | None, se: float | None = None) -> str:
    """A figure with its standard error (none shown when 0), ``-`` where not measured."""
    return fmt_estimate(value, se or None, missing="-")


def print_summary(result: AuditResult, console: Console) -> None:
    cfg, ds, m = result.config, result.dataset, result.metrics
    ck = result.checkpoint
    console.print(f"[bold]wciaudit {result.tool_version}[/] {ck.path} ({ck.format}, {ck.arch}, {ck.num_params:,} parameters, sha256 {ck.sha256[:12]})", markup=True, highlight=False)
    console.print(f"data: {ds.name} (train {ds.n_train}, test {ds.n_test}); {ds.reason}", markup=False)
    if cfg:
        console.print(
            f"threat: {cfg.get('norm', 'linf')} eps={format_eps(cfg['eps'])} {cfg['attack']}-{cfg['steps']} "
            f"alpha={cfg['step_size']:.4g} restarts={cfg['restarts']} seed={cfg['seed']} device={cfg['device']}",
            markup=False,
        )
    if result.wci is not None or m.robust_acc_train is not None or m.robust_acc_test is not None:
        t = Table(title="Robustness", show_edge=False)
        for col in ("", "train", "test", "gap"):
            t.add_column(col, justify="right")
        t.add_row("clean acc", fmt(m.clean_acc_train, m.clean_acc_train_se), fmt(m.clean_acc_test, m.clean_acc_test_se), "")
        t.add_row("robust acc", fmt(m.robust_acc_train, m.robust_acc_train_se), fmt(m.robust_acc_test, m.robust_acc_test_se), fmt(m.gap_err, m.gap_err_se))
        t.add_row("clean loss", fmt(m.clean_loss_train, m.clean_loss_train_se), fmt(m.clean_loss_test, m.clean_loss_test_se), "")
        t.add_row("robust loss", fmt(m.robust_loss_train, m.robust_loss_train_se), fmt(m.robust_loss_test, m.robust_loss_test_se), fmt(m.gap_loss, m.gap_loss_se))
        console.print(t)
    t = Table(title="Layers (largest WCI terms first)", show_edge=False)
    for col in ("layer", "shape", "||W||_F", "Tr(H)", "method", "probes", "WCI term", "flag"):
        t.add_column(col, justify="left" if col in ("layer", "method", "flag") else "right")
    ranked = sorted(result.layers, key=lambda la: -(la.wci_term or 0.0))
    for la in ranked[:12]:
        t.add_row(la.name, "x".join(map(str, la.shape)), f"{la.frob_norm:.4g}", fmt(la.trace, la.trace_se),
                  la.method, str(la.probes), fmt(la.wci_term), la.flag or "")
    if len(ranked) > 12:
        t.add_row(f"... {len(ranked) - 12} more layers in the JSON", "", "", "", "", "", "", "")
    console.print(t)
    pb = result.pac_bayes
    console.print(f"WCI = {fmt(result.wci, result.wci_se)}  (SE: delta method)", markup=False)
    if pb.bound is not None:
        console.print(
            f"PAC-Bayes (second order, c* chosen after seeing the data): bound {pb.bound:.4g} = "
            f"L_adv {pb.l_adv:.4g} + curvature {pb.curvature_term:.4g} + sqrt((KL {pb.kl_term:.4g} + "
            f"conf {pb.confidence_term:.4g}) / 2m), c* = {pb.c:.3g}, m = {pb.m}",
            markup=False,
        )
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    ti = result.timings
    console.print(f"time: load {ti.load_s:.1f}s, attack {ti.attack_s:.1f}s, trace {ti.trace_s:.1f}s, total {ti.total_s:.1f}s", markup=False)
