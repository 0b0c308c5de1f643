"""Sentences about a result that the terminal, the pages and the docs must say alike.

Each is generated from what the result records, so that no page states a fixed claim
that a later change to the measurement makes false:

- :func:`wci_layers_sentence`: how many layers WCI counts (``AuditResult.wci_layers``);
- :func:`se_sentence`, :func:`se_covers_words`: what a standard error covers, from the
  result's ``se_covers`` (SPEC: What an SE covers);
- :func:`normalisation_text`: the input normalisation inside the model, and its source.

Example:
    >>> wci_layers_sentence({"counted": 1, "total": 26, "nonpositive": 25})
    '25 of 26 layers have Tr(H) <= 0 at the adversarial points and add 0: WCI and its SE are those of the other 1 layer alone'
    >>> se_covers_words(["probes", "attack-starts"])
    "the Hutchinson probes and the attack's random starts"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "SE_SOURCES",
    "most_layers_nonpositive",
    "normalisation_text",
    "se_covers_words",
    "se_sentence",
    "wci_layers_sentence",
]

#: the sources of variation a ``se_covers`` list names, in words
SE_SOURCES = {
    "probes": "the Hutchinson probes",
    "sampled-labels": "the sampled labels of the Gauss-Newton route",
    "hessian-subset": "the draw of the Hessian subset from the train split",
    "attack-starts": "the attack's random starts",
}


def wci_layers_sentence(counts: dict[str, int] | None) -> str | None:
    """What WCI counts when some layers have a non-positive trace; None when every
    layer counts (or no trace was measured)."""
    if not counts or not counts.get("nonpositive"):
        return None
    k, n, c = counts["nonpositive"], counts["total"], counts["counted"]
    if c == 0:
        return (
            f"all {n} layers have Tr(H) <= 0 at the adversarial points: WCI is 0 and "
            "measures no layer"
        )
    layers = "layer" if c == 1 else "layers"
    verb = "has" if k == 1 else "have"
    return (
        f"{k} of {n} layers {verb} Tr(H) <= 0 at the adversarial points and add 0: WCI and "
        f"its SE are those of the other {c} {layers} alone"
    )


def most_layers_nonpositive(counts: dict[str, int] | None) -> bool:
    """True when at least half the layers are left out of WCI (the reader must be told
    before reading WCI as the network's curvature)."""
    return bool(
        counts and counts.get("nonpositive") and 2 * counts["nonpositive"] >= counts["total"]
    )


def se_covers_words(covers: Sequence[str]) -> str:
    """``["probes", "attack-starts"]`` -> ``the Hutchinson probes and the attack's random
    starts``; an unknown source is named as it is."""
    words = [SE_SOURCES.get(c, c) for c in covers]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def se_sentence(covers: Sequence[str] | None, what: str = "WCI's SE") -> str:
    """What an SE covers and what it does not, from its ``se_covers`` list (None: a
    result written before SEs said what they cover)."""
    if covers is None:
        return (
            f"{what}: delta method from the per-layer SEs (the result does not say what they cover)"
        )
    if not covers:
        text = (
            f"{what} is 0: every layer took an exact route on the whole train split and "
            "the attack's random starts were not measured"
        )
    else:
        text = f"{what} covers {se_covers_words(covers)}"
        if "attack-starts" not in covers:
            text += "; not the attack's random starts (not measured)"
    return text + "; no SE covers the choice of data or of the attack"


def normalisation_text(mean: Any, std: Any, sources: dict[str, Any] | None) -> str:
    """The normalisation applied inside the audited model: ``mean (0.5,) std (0.25,)
    (from checkpoint metadata)`` or ``none (default)``."""
    source = (sources or {}).get("mean") or (sources or {}).get("std")
    where = f" (from {source})" if source else ""
    if mean is None or std is None:
        return f"none{where}: inputs reach the network as they are"
    return f"mean {_values(mean)}, std {_values(std)}{where}"


def _values(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
    return f"{float(values):.4g}"
