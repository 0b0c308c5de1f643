"""The human summary of a result, printed by ``scan`` (rich tables on stdout).

Layer names are shown whole at any width (CI logs and pipes render at 80 columns): a
name too long for its column wraps, it is never cut to ``conv1.6.…``. Below
:data:`WIDE` columns the layer table is compact: shape, route and flag go on the lines
under the name, and the figures keep their own columns.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..formatting import break_lines, fmt_estimate, format_eps
from ..result import AuditResult, LayerResult
from ..sentences import (
    most_layers_nonpositive,
    normalisation_text,
    se_covers_words,
    wci_layers_sentence,
)

#: console width from which the layer table has one column per field
WIDE = 120
#: layers listed; the JSON has all of them
SHOWN_LAYERS = 12


def fmt(value: float | None, se: float | None = None) -> str:
    """A figure with its standard error (none shown when 0), ``-`` where not measured."""
    return fmt_estimate(value, se or None, missing="-")


def has_data(result: AuditResult) -> bool:
    """False for a weights-only result (``--weights-only``, or no usable data)."""
    return result.dataset.n_train is not None or result.dataset.n_test is not None


def print_summary(result: AuditResult, console: Console) -> None:
    """The checkpoint, data and threat model, the robustness table, the layer table, WCI,
    the PAC-Bayes terms, the notes and the timings."""
    _print_header(result, console)
    m = result.metrics
    if result.wci is not None or m.robust_acc_train is not None or m.robust_acc_test is not None:
        console.print(_robustness_table(result))
    ranked = sorted(result.layers, key=lambda la: -(la.wci_term or 0.0))
    shown = ranked[:SHOWN_LAYERS]
    if not has_data(result):
        console.print(_weights_table(shown))
    elif console.width >= WIDE:
        console.print(_wide_layer_table(shown))
    else:
        console.print(_compact_layer_table(shown, console.width))
    if len(ranked) > SHOWN_LAYERS:
        console.print(f"... {len(ranked) - SHOWN_LAYERS} more layers in the JSON", markup=False)
    _print_figures(result, console)


def _print_header(result: AuditResult, console: Console) -> None:
    ck, ds, cfg = result.checkpoint, result.dataset, result.config
    # a path longer than the console breaks between its parts, never inside a name
    path = ck.path
    if len("wciaudit ") + len(result.tool_version) + len(path) >= console.width:
        path = "\n" + "\n".join(break_lines(path, console.width, separators="/\\"))
    console.print(
        f"[bold]wciaudit {escape(result.tool_version)}[/] {escape(path)} "
        f"({escape(ck.format)}, {escape(ck.arch)}, {ck.num_params:,} parameters, "
        f"sha256 {ck.sha256[:12]})",
        highlight=False,
    )
    if ck.mean is not None or cfg.get("preprocessing_source"):
        console.print(f"normalisation: {normalisation(result)}", markup=False)
    if not has_data(result):
        reason = f" ({ds.reason})" if ds.reason else ""
        console.print(
            f"data: none{reason}; weight norms and parameter inventory only", markup=False
        )
        return
    console.print(
        f"data: {ds.name} (train {ds.n_train}, test {ds.n_test}); {ds.reason}", markup=False
    )
    if cfg:
        console.print(
            f"threat: {cfg.get('norm', 'linf')} eps={format_eps(cfg['eps'])} {attack_text(cfg)} "
            f"seed={cfg['seed']} device={cfg['device']}",
            markup=False,
        )
    at = result.attacks
    if at.accuracy_from:
        console.print(
            f"robust accuracy from {at.accuracy_from}; robust loss and Hessian points from "
            f"{at.loss_from}",
            markup=False,
        )
    for split, counts in at.broken_by.items():
        text = ", ".join(f"{stage} {k}" for stage, k in counts.items())
        console.print(f"broken first by, {split}: {text}", markup=False)


def attack_text(cfg: dict) -> str:
    """``pgd-10 alpha=0.025 restarts=1``; the other attacks by name (their settings are fixed)."""
    if cfg["attack"] in ("pgd", "fgsm"):
        return (
            f"{cfg['attack']}-{cfg['steps']} alpha={cfg['step_size']:.4g} "
            f"restarts={cfg['restarts']}"
        )
    return str(cfg["attack"])


def _robustness_table(result: AuditResult) -> Table:
    m = result.metrics
    t = Table(title="Robustness", show_edge=False)
    for col in ("", "train", "test", "gap"):
        t.add_column(col, justify="right")
    t.add_row(
        "clean acc",
        fmt(m.clean_acc_train, m.clean_acc_train_se),
        fmt(m.clean_acc_test, m.clean_acc_test_se),
        "",
    )
    by_attack = result.attacks.robust_acc
    chosen = result.attacks.accuracy_from
    t.add_row(
        f"robust acc, {chosen}" if len(by_attack) > 1 else "robust acc",
        fmt(m.robust_acc_train, m.robust_acc_train_se),
        fmt(m.robust_acc_test, m.robust_acc_test_se),
        fmt(m.gap_err, m.gap_err_se),
    )
    # the loss attack's own figure beside the chosen attack's (PGD or APGD-CE beside
    # AutoAttack), so that the two can be compared on the same examples
    for attack, acc in by_attack.items():
        if attack != chosen:
            t.add_row(
                f"robust acc, {attack}",
                fmt(acc.get("train"), acc.get("train_se")),
                fmt(acc.get("test"), acc.get("test_se")),
                "",
            )
    t.add_row(
        "clean loss",
        fmt(m.clean_loss_train, m.clean_loss_train_se),
        fmt(m.clean_loss_test, m.clean_loss_test_se),
        "",
    )
    t.add_row(
        f"robust loss, {result.attacks.loss_from}" if len(by_attack) > 1 else "robust loss",
        fmt(m.robust_loss_train, m.robust_loss_train_se),
        fmt(m.robust_loss_test, m.robust_loss_test_se),
        fmt(m.gap_loss, m.gap_loss_se),
    )
    return t


def route(layer: LayerResult) -> str:
    """How the trace was taken: ``exact-ggn`` or ``hutchinson, 60 probes``."""
    if layer.exact or layer.probes == "exact":
        return layer.method
    return f"{layer.method}, {layer.probes} probes"


def _shape(layer: LayerResult) -> str:
    return "x".join(map(str, layer.shape))


def _name_column(t: Table, layers: list[LayerResult], limit: int) -> None:
    # a name wraps (fold) instead of being cut; it gets the width of the longest name
    # the console allows, so that names wrap only when they cannot fit at all
    longest = max((len(la.name) for la in layers), default=5)
    t.add_column("layer", justify="left", overflow="fold", min_width=max(5, min(longest, limit)))


def _wide_layer_table(layers: list[LayerResult]) -> Table:
    t = Table(title="Layers (largest WCI terms first)", show_edge=False)
    _name_column(t, layers, 60)
    for col in ("shape", "||W||_F", "Tr(H)", "route", "WCI term", "flag"):
        left = col in ("route", "flag")
        t.add_column(col, justify="left" if left else "right", overflow="fold", no_wrap=not left)
    for la in layers:
        t.add_row(
            escape(la.name),
            _shape(la),
            f"{la.frob_norm:.4g}",
            fmt(la.trace, la.trace_se),
            route(la),
            fmt(la.wci_term),
            escape(la.flag or ""),
        )
    return t


def _compact_layer_table(layers: list[LayerResult], width: int) -> Table:
    """The name column holds the name, then ``shape, route`` and any flag beneath it."""
    t = Table(title="Layers (largest WCI terms first)", show_edge=False)
    _name_column(t, layers, max(20, width - 42))
    for col in ("||W||_F", "Tr(H) ± SE", "WCI term"):
        t.add_column(col, justify="right", no_wrap=True)
    for la in layers:
        cell = Text(la.name)
        cell.append(f"\n  {_shape(la)}, {route(la)}", style="dim")
        if la.flag:
            cell.append(f"\n  flag: {la.flag}", style="bold red")
        t.add_row(cell, f"{la.frob_norm:.4g}", fmt(la.trace, la.trace_se), fmt(la.wci_term))
    return t


def _weights_table(layers: list[LayerResult]) -> Table:
    t = Table(title="Layers (weights only)", show_edge=False)
    _name_column(t, layers, 60)
    for col in ("shape", "numel", "||W||_F"):
        t.add_column(col, justify="right", no_wrap=True)
    for la in layers:
        t.add_row(escape(la.name), _shape(la), f"{la.numel:,}", f"{la.frob_norm:.4g}")
    return t


def _print_figures(result: AuditResult, console: Console) -> None:
    pb, ti = result.pac_bayes, result.timings
    if has_data(result):
        console.print(f"WCI = {fmt(result.wci, result.wci_se)}  ({se_words(result)})", markup=False)
        counted = wci_layers_sentence(result.wci_layers)
        if counted:
            see = (
                " (docs/spec.md: Layers with Tr(H) <= 0)"
                if most_layers_nonpositive(result.wci_layers)
                else ""
            )
            console.print(f"{counted}{see}", markup=False)
    if result.wci_target is not None:
        console.print(target_words(result.wci_target), markup=False)
    if pb.bound is not None:
        console.print(
            f"PAC-Bayes (second order, c* chosen after seeing the data): bound {pb.bound:.4g} = "
            f"L_adv {pb.l_adv:.4g} + curvature {pb.curvature_term:.4g} + sqrt((KL {pb.kl_term:.4g} + "
            f"conf {pb.confidence_term:.4g}) / 2m), c* = {pb.c:.3g}, m = {pb.m}",
            markup=False,
        )
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    if has_data(result):
        console.print(
            f"time: load {ti.load_s:.1f}s, attack {ti.attack_s:.1f}s, trace {ti.trace_s:.1f}s, total {ti.total_s:.1f}s",
            markup=False,
        )
    else:
        console.print(f"time: load {ti.load_s:.1f}s, total {ti.total_s:.1f}s", markup=False)


def print_time_shares(result: AuditResult, console: Console) -> None:
    """``--verbose``: each timed part's share of the scan's wall time (``timings.shares``)."""
    ti = result.timings
    if not ti.shares:
        return
    words = {"attack_spread": "attack-spread re-attack", "spread_remeasure": "spread re-measure"}
    parts = ", ".join(
        f"{words.get(name, name)} {share:.0%} ({ti.parts_s.get(name, ti.total_s * share):.1f}s)"
        for name, share in ti.shares.items()
    )
    console.print(f"time shares of {ti.total_s:.1f}s: {parts}", markup=False)


def se_words(result: AuditResult) -> str:
    """What WCI's SE covers, in words; an SE of 0 says why it is 0."""
    covers = result.se_covers.get("wci")
    if covers is None:
        return "SE: delta method"
    if not covers:
        return "SE 0: exact routes on the whole split, attack spread not measured"
    return "SE covers " + se_covers_words(covers)


def normalisation(result: AuditResult) -> str:
    """The input normalisation inside the audited model and where it came from."""
    ck = result.checkpoint
    return normalisation_text(ck.mean, ck.std, result.config.get("preprocessing_source"))


def target_words(target: dict) -> str:
    """One line on the WCI precision target (--tol): met or missed, and why."""
    rel = target.get("relative_se")
    got = "n/a" if rel is None else f"{rel:.1%}"
    state = "met" if target.get("met") else "missed"
    reason = str(target.get("reason", ""))
    why = "" if reason == "met" else f": {reason}"
    return f"--tol {target.get('tol'):g}: {state} (relative SE {got}){why}"
