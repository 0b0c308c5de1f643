"""The result is assembled from the stages' values: nothing that ran is lost, nothing
that did not run is made up, and assembling twice gives two independent results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wciaudit.config import LoadOptions, ScanConfig
from wciaudit.distributed import Shard
from wciaudit.pipeline.assemble import ScanState, assemble
from wciaudit.pipeline.load import inventory, load, resolve_threat_model
from wciaudit.pipeline.run import ScanRun

CNN = Path(__file__).resolve().parents[2] / "sample_models" / "digits_cnn.safetensors"
CNN_ARCH = CNN.with_suffix(".py")


@pytest.fixture(scope="module")
def state_and_run() -> tuple[ScanState, ScanRun]:
    loaded = load(str(CNN), LoadOptions(arch=str(CNN_ARCH)))
    config, sources = resolve_threat_model(ScanConfig(), loaded)
    run = ScanRun.create(config, Shard())
    run.notes.append("a note")
    return ScanState(loaded, sources, inventory(loaded.model)), run


def test_a_state_after_load_has_norms_and_no_figures(state_and_run) -> None:
    state, run = state_and_run
    result = assemble(state, run)
    assert result.config["threat_model_source"] == {"eps": "checkpoint metadata", "norm": "default"}
    assert result.config["eps"] == pytest.approx(0.1) and result.config["norm"] == "linf"
    assert all(la.frob_norm > 0 and la.trace is None for la in result.layers)
    assert result.wci is None and result.metrics.robust_acc_test is None
    assert result.notes == ["a note"] and result.config["batch_size_used"] == 128
    json.loads(result.to_json())


def test_assembling_twice_gives_independent_results(state_and_run) -> None:
    state, run = state_and_run
    first, second = assemble(state, run), assemble(state, run)
    first.layers[0].trace = 1.0
    first.notes.append("changed")
    assert second.layers[0].trace is None and second.notes == ["a note"]
    assert state.inventory.layers[0].trace is None and run.notes == ["a note"]
