"""A result as CSV, for pandas or a spreadsheet: one row per layer, the headline figures
repeated on every row, so that one file loads as one table.

Columns: ``checkpoint``, ``sha256``, ``dataset``, ``eps``, the headline figures
(:data:`HEADLINE`: WCI, robust metrics and gaps with their SEs, the PAC-Bayes bound),
then the layer's own (:data:`LAYER_COLUMNS`). A figure that was not measured is an
empty cell (``NaN`` in pandas), never 0. A result without layers gives one row.

Example:
    >>> import csv, io
    >>> from wciaudit.result import AuditResult, LayerResult
    >>> text = csv_text(AuditResult(wci=3.0, layers=[LayerResult(name="fc.weight", shape=[10, 4])]))
    >>> row = next(csv.DictReader(io.StringIO(text)))
    >>> row["layer"], row["shape"], row["wci"], row["robust_acc_test"]
    ('fc.weight', '10x4', '3.0', '')
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .result import AuditResult, LayerResult, write_atomic

__all__ = ["COLUMNS", "HEADLINE", "LAYER_COLUMNS", "csv_rows", "csv_text", "write_csv"]

#: the result's figures, on every row
HEADLINE = (
    "wci", "wci_se", "bound", "c", "m",
    "clean_acc_train", "clean_acc_test", "robust_acc_train", "robust_acc_train_se",
    "robust_acc_test", "robust_acc_test_se", "robust_loss_train", "robust_loss_test",
    "gap_loss", "gap_loss_se", "gap_err", "gap_err_se",
)  # fmt: skip
#: the layer's figures
LAYER_COLUMNS = (
    "layer", "shape", "numel", "frob_norm", "trace", "trace_se", "probes", "method",
    "converged", "wci_term", "wci_term_se", "flag",
)  # fmt: skip
COLUMNS = ("checkpoint", "sha256", "dataset", "eps", *HEADLINE, *LAYER_COLUMNS)


def _headline(result: AuditResult) -> dict[str, Any]:
    pb, m = result.pac_bayes, result.metrics
    row: dict[str, Any] = {
        "checkpoint": result.checkpoint.path,
        "sha256": result.checkpoint.sha256,
        "dataset": result.dataset.name,
        "eps": result.config.get("eps"),
        "wci": result.wci,
        "wci_se": result.wci_se,
        "bound": pb.bound,
        "c": pb.c,
        "m": pb.m,
    }
    for key in HEADLINE:
        row.setdefault(key, getattr(m, key, None))
    return row


def _layer(layer: LayerResult) -> dict[str, Any]:
    return {
        "layer": layer.name,
        "shape": "x".join(map(str, layer.shape)),
        "numel": layer.numel,
        "frob_norm": layer.frob_norm,
        "trace": layer.trace,
        "trace_se": layer.trace_se,
        "probes": 0 if layer.probes == "exact" else layer.probes,
        "method": layer.method,
        "converged": layer.converged,
        "wci_term": layer.wci_term,
        "wci_term_se": layer.wci_term_se,
        "flag": layer.flag,
    }


def csv_rows(result: AuditResult) -> list[dict[str, Any]]:
    """The table as dicts keyed by :data:`COLUMNS`; None where nothing was measured."""
    head = _headline(result)
    if not result.layers:
        return [{**head, **dict.fromkeys(LAYER_COLUMNS)}]
    return [{**head, **_layer(la)} for la in result.layers]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # every digit: the CSV reads back to the same float
    return value


def csv_text(results: AuditResult | Sequence[AuditResult]) -> str:
    """The CSV text: a header row, then one row per layer of each result in turn (the
    ``checkpoint`` and ``sha256`` columns tell the results apart)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in [results] if isinstance(results, AuditResult) else results:
        for row in csv_rows(result):
            writer.writerow({key: _cell(value) for key, value in row.items()})
    return buffer.getvalue()


def write_csv(results: AuditResult | Sequence[AuditResult], path: str | os.PathLike[str]) -> Path:
    """Write :func:`csv_text` atomically to ``path`` (temp file, then rename): a failure
    leaves no file and an existing one untouched."""
    return write_atomic(path, csv_text(results))
