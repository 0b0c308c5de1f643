"""The shared sentences: what WCI counts, what an SE covers, the normalisation."""

from __future__ import annotations

import pytest

from wciaudit.result import AuditResult, LayerResult
from wciaudit.sentences import (
    SE_SOURCES,
    most_layers_nonpositive,
    normalisation_text,
    se_covers_words,
    se_sentence,
    wci_layers_sentence,
)


def _result(traces: list[float | None]) -> AuditResult:
    return AuditResult(
        layers=[LayerResult(name=f"l{i}.weight", trace=t) for i, t in enumerate(traces)]
    )


def test_wci_layers_counts_the_nonpositive_traces_and_is_in_the_json():
    r = _result([-188.3, -91.3, 0.0, 4.2])
    assert r.wci_layers == {"counted": 1, "total": 4, "nonpositive": 3}
    d = r.to_dict()
    assert d["wci_layers"] == r.wci_layers
    keys = list(d)
    assert keys.index("wci_layers") == keys.index("wci_se") + 1  # beside the figure it qualifies
    # derived from the layers: a round trip gives the same counts
    assert AuditResult.from_json(r.to_json()).wci_layers == r.wci_layers


def test_wci_layers_is_null_without_traces():
    assert _result([]).wci_layers is None
    assert _result([None, None]).wci_layers is None  # weights only
    assert _result([]).to_dict()["wci_layers"] is None


def test_wci_layers_sentence_says_how_many_of_how_many():
    assert wci_layers_sentence(_result([1.0, 2.0]).wci_layers) is None
    assert wci_layers_sentence(None) is None
    text = wci_layers_sentence(_result([-1.0] * 25 + [3.0]).wci_layers)
    assert text.startswith("25 of 26 layers have Tr(H) <= 0 at the adversarial points")
    assert "the other 1 layer alone" in text
    assert wci_layers_sentence(_result([-1.0, 2.0, 3.0]).wci_layers).startswith("1 of 3 layers has")
    assert "all 2 layers" in wci_layers_sentence(_result([-1.0, 0.0]).wci_layers)


@pytest.mark.parametrize(
    ("traces", "most"),
    [([-1.0] * 25 + [1.0], True), ([-1.0, 1.0], True), ([-1.0, 1.0, 1.0], False), ([1.0], False)],
)
def test_most_layers_nonpositive_from_half(traces, most):
    assert most_layers_nonpositive(_result(traces).wci_layers) is most


def test_se_sentence_follows_se_covers():
    full = se_sentence(["probes", "hessian-subset", "attack-starts"])
    for source in ("probes", "hessian-subset", "attack-starts"):
        assert SE_SOURCES[source] in full
    assert "not the attack's random starts" not in full
    partial = se_sentence(["probes"])
    assert "Hutchinson probes" in partial and "not the attack's random starts" in partial
    zero = se_sentence([])
    assert " is 0" in zero and "not measured" in zero
    assert "does not say" in se_sentence(None)
    assert se_covers_words(["probes", "sampled-labels", "x"]) == (
        "the Hutchinson probes, the sampled labels of the Gauss-Newton route and x"
    )


def test_normalisation_text_names_values_and_source():
    assert normalisation_text(
        [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], {"mean": "timm config"}
    ) == ("mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) (from timm config)")
    assert normalisation_text(None, None, {"mean": "default"}).startswith("none (from default)")
    assert normalisation_text(None, None, None).startswith("none:")
