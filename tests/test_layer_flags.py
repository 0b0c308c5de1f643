"""The flag a layer carries when it did not converge names the probe cap, not the probes
it had: under the WCI target a layer may stop at one probe while the cap is 200."""

from __future__ import annotations

from wciaudit.curvature.estimate import TraceEstimate
from wciaudit.pipeline.measure import fill_layer
from wciaudit.result import LayerResult


def _estimate(probes: int, method: str = "hutchinson", converged: bool = False) -> TraceEstimate:
    return TraceEstimate(
        name="model.blocks.0.attn.qkv.weight",
        trace=-188.3,
        se=44.0,
        probes=probes,
        method=method,
        converged=converged,
        stop_reason="tol" if converged else "cap",
        probe_se=44.0,
        se_covers=("probes",),
    )


def _flag(est: TraceEstimate, max_probes: int | None = 200) -> str:
    layer = LayerResult(name="blocks.0.attn.qkv.weight", frob_norm=3.0)
    fill_layer(layer, est, None, None, max_probes=max_probes)
    return layer.flag or ""


def test_a_layer_stopped_below_the_cap_says_so():
    flag = _flag(_estimate(1))
    assert "non-positive trace: contributes 0 to WCI" in flag
    assert "1-probe cap" not in flag
    assert "when probing stopped (1 probe here, cap 200)" in flag


def test_a_layer_at_the_cap_names_the_cap():
    assert "at the cap of 200 probes" in _flag(_estimate(200))


def test_sampled_labels_are_not_called_probes():
    flag = _flag(_estimate(3, method="mc-ggn"))
    assert "3 sampled labels per example here, cap 200" in flag


def test_a_converged_layer_has_no_convergence_flag():
    assert "not converged" not in _flag(_estimate(40, converged=True))
