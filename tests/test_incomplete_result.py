"""Incomplete results: the copies ``scan(on_stage=...)`` hands out after each stage, their
JSON form, and what the gate and the track cache do with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wciaudit import AuditResult, ConfigError, scan
from wciaudit.gate import GateConfig, apply_gates
from wciaudit.result import STAGES
from wciaudit.track.cache import read_cache

ROOT = Path(__file__).resolve().parents[1]
RESNET = ROOT / "sample_models" / "digits_resnet_pgd.safetensors"


@pytest.fixture(scope="module")
def staged() -> tuple[AuditResult, list[tuple[str, AuditResult]]]:
    """A small scan and the incomplete copies it handed out after each stage."""
    kept: list[tuple[str, AuditResult]] = []
    result = scan(
        RESNET,
        "sample",
        eps="0.1",
        train_samples=150,
        test_samples=150,
        hessian_samples=60,
        masking_samples=0,
        on_stage=lambda stage, partial: kept.append((stage, partial)),
    )
    return result, kept


def test_one_copy_after_each_stage_but_the_last(staged) -> None:
    result, kept = staged
    assert result.complete and result.stopped_at is None and result.stages == list(STAGES)
    assert [stage for stage, _ in kept] == list(STAGES[1:-1])
    for i, (stage, partial) in enumerate(kept):
        assert partial.complete is False
        assert partial.stages == list(STAGES[: i + 2]) and partial.stages[-1] == stage
        assert partial.stopped_at == STAGES[i + 2]
        assert partial.gate.passed is False and partial.gate.checks == []
        assert partial.gate.failures == [partial.incomplete_reason]
        assert partial.notes[-1] == partial.incomplete_reason
        # the copy is the result's own: the final result holds no incomplete mark
        assert partial.incomplete_reason not in result.notes


def test_a_copy_has_the_finished_figures_and_nulls_for_the_rest(staged) -> None:
    result, kept = staged
    copies = dict(kept)
    after_attack, after_eval, after_curv = copies["attack"], copies["evaluate"], copies["curvature"]
    assert after_attack.attacks == result.attacks
    assert after_attack.metrics.robust_acc_test is None
    assert after_attack.timings.eval_s is None and after_attack.timings.attack_s is not None
    m_full, m_part = result.metrics, after_eval.metrics
    assert m_part.hessian_loss is None and m_full.hessian_loss is not None
    assert vars(m_part) == vars(m_full) | {"hessian_loss": None}
    assert after_eval.wci is None and after_eval.dataset.hessian_samples is None
    assert all(la.trace is None and la.wci_term is None for la in after_eval.layers)
    assert [la.frob_norm for la in after_eval.layers] == [la.frob_norm for la in result.layers]
    # after the curvature stage the traces are there; WCI and the bound (the bound
    # stage's figures) are not
    assert [la.trace for la in after_curv.layers] == [la.trace for la in result.layers]
    assert [la.wci_term for la in after_curv.layers] == [la.wci_term for la in result.layers]
    assert after_curv.wci is None and after_curv.wci_se is None and after_curv.wci_target is None
    assert after_curv.pac_bayes.bound is None and result.pac_bayes.bound is not None
    assert after_curv.timings.trace_s == result.timings.trace_s


def test_a_scan_without_data_hands_out_no_copy() -> None:
    kept = []
    result = scan(RESNET, weights_only=True, on_stage=lambda *a: kept.append(a))
    assert kept == [] and result.complete and result.stages == ["load", "data"]


def test_json_round_trip_and_old_files() -> None:
    partial = AuditResult(complete=False, stopped_at="curvature", stages=["load", "data"])
    back = AuditResult.from_json(partial.to_json())
    assert (back.complete, back.stopped_at, back.stages) == (False, "curvature", ["load", "data"])
    old = json.loads(AuditResult().to_json())
    for key in ("complete", "stopped_at", "stages"):
        del old[key]
    assert AuditResult.from_dict(old).complete is True
    with pytest.raises(ConfigError, match="complete must be true or false"):
        AuditResult.from_dict(old | {"complete": "no"})


def test_gates_refuse_an_incomplete_result_or_baseline() -> None:
    partial = AuditResult(wci=1.0, wci_se=0.1, complete=False, stopped_at="bound", stages=["load"])
    gate = apply_gates(partial, GateConfig(max_wci=10.0))
    assert not gate.passed and gate.checks == [] and len(gate.failures) == 1
    assert gate.failures[0].startswith("incomplete result: the scan was stopped during its bound")
    whole = AuditResult(wci=1.0, wci_se=0.1)
    assert apply_gates(whole, GateConfig(max_wci=10.0)).passed
    gate = apply_gates(whole, GateConfig(max_wci_increase="10%"), baseline=partial)
    assert not gate.passed and gate.failures[0].startswith("the baseline is an incomplete result")


def test_track_cache_scans_an_incomplete_entry_again(tmp_path: Path) -> None:
    entry = tmp_path / "entry.json"
    AuditResult(complete=False, stopped_at="curvature").save(entry)
    assert read_cache(entry) is None
    AuditResult().save(entry)
    assert read_cache(entry) is not None
