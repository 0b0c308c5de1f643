"""CSV export: one row per layer with the headline figures, read back exactly by pandas-like
readers (the csv module here), empty cells for what was not measured, atomic writes."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from test_report import make_result

from wciaudit import export
from wciaudit.result import AuditResult


def _read(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_one_row_per_layer_with_exact_figures() -> None:
    r = make_result()
    rows = _read(export.csv_text(r))
    assert [row["layer"] for row in rows] == [la.name for la in r.layers]
    assert list(rows[0]) == list(export.COLUMNS)
    for row, la in zip(rows, r.layers, strict=True):
        assert float(row["frob_norm"]) == la.frob_norm and float(row["trace"]) == la.trace
        assert float(row["wci"]) == r.wci and float(row["gap_loss_se"]) == r.metrics.gap_loss_se
        assert row["shape"] == "x".join(map(str, la.shape))
        assert int(row["probes"]) == (0 if la.exact else la.probes)
        assert row["flag"] == (la.flag or "")


def test_unmeasured_figures_are_empty_cells() -> None:
    r = make_result()
    r.metrics.robust_acc_test = None
    r.wci = None
    row = _read(export.csv_text(r))[0]
    assert row["robust_acc_test"] == "" and row["wci"] == ""
    empty = _read(export.csv_text(AuditResult()))
    assert len(empty) == 1 and empty[0]["layer"] == ""


def test_several_results_stack(tmp_path: Path) -> None:
    a, b = make_result(path="a.safetensors"), make_result(path="b.safetensors", n_layers=2)
    rows = _read(export.csv_text([a, b]))
    assert [row["checkpoint"] for row in rows] == ["a.safetensors"] * 4 + ["b.safetensors"] * 2


def test_write_csv_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "t.csv"
    assert export.write_csv(make_result(), target) == target
    before = target.read_text()

    def boom(result: object) -> str:
        raise RuntimeError("failed")

    monkeypatch.setattr(export, "csv_text", boom)
    with pytest.raises(RuntimeError):
        export.write_csv(make_result(), target)
    assert target.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["t.csv"]
