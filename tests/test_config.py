"""Settings: the eps parser and range checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wciaudit.config import ScanConfig, format_eps, parse_eps
from wciaudit.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8/255", 8 / 255),
        ("0.03", 0.03),
        ("3e-2", 0.03),
        (" 2 / 255 ", 2 / 255),
        ("0", 0.0),
        (0.1, 0.1),
    ],
)
def test_parse_eps(text: str, value: float) -> None:
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "abc", "-0.1", "1/0", "nan", "inf", "8//255", "0.1.2", True])
def test_parse_eps_rejects(text: object) -> None:
    with pytest.raises(ConfigError):
        parse_eps(text)  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=255))
def test_fractions_of_255_round_trip(k: int) -> None:
    assert parse_eps(format_eps(k / 255)) == pytest.approx(k / 255)
    assert format_eps(k / 255) == (f"{k}/255" if k % 255 else "1")


@given(st.text(max_size=20))
def test_parse_eps_never_raises_anything_but_config_error(text: str) -> None:
    try:
        v = parse_eps(text)
    except ConfigError:
        return
    assert v >= 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(eps=2.0, norm="linf"),
        dict(steps=0),
        dict(tol=0),
        dict(tol=1.5),
        dict(delta=1),
        dict(device="tpu"),
        dict(device="cuda:x"),
        dict(attack="cw"),
        dict(max_probes=1),
        dict(batch_size=0),
        dict(dtype="float16"),
        dict(hessian_samples=0),
        dict(step_size=-1.0),
        dict(seed=-1),
    ],
)
def test_out_of_range_settings(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ScanConfig(**kwargs)


def test_config_dict_round_trip() -> None:
    cfg = ScanConfig(eps="8/255", steps=7, attack="pgd")
    d = cfg.to_dict()
    assert d["eps_text"] == "8/255" and d["step_size"] == pytest.approx(2.5 * (8 / 255) / 7)
    # the file records the effective step size; reading it back gives the same settings
    assert ScanConfig.from_dict(d).to_dict() == d


def test_memory_bytes_is_a_setting_in_the_json() -> None:
    from wciaudit.config import DEFAULT_MEMORY_BYTES

    assert ScanConfig().memory_bytes == DEFAULT_MEMORY_BYTES == 512 * 2**20
    assert ScanConfig(memory_bytes=2**20).to_dict()["memory_bytes"] == 2**20
    with pytest.raises(ConfigError, match="memory_bytes"):
        ScanConfig(memory_bytes=0)


@pytest.mark.parametrize(
    ("text", "norm"),
    [
        ("linf", "linf"),
        ("Linf", "linf"),
        ("L_inf", "linf"),
        ("inf", "linf"),
        ("l2", "l2"),
        ("L2", "l2"),
    ],
)
def test_parse_norm(text: str, norm: str) -> None:
    from wciaudit.config import parse_norm

    assert parse_norm(text).value == norm


def test_parse_norm_rejects() -> None:
    from wciaudit.config import parse_norm

    with pytest.raises(ConfigError, match="linf, l2"):
        parse_norm("l1")


def test_load_options_are_frozen_and_normalised() -> None:
    import dataclasses

    from wciaudit.config import LoadOptions

    opts = LoadOptions(arch_args='{"in_chans": 1}', mean=[0.5], std=[0.25], input_size=[1, 8, 8])
    assert opts.arch_args == {"in_chans": 1} and opts.mean == (0.5,) and opts.std == (0.25,)
    assert opts.input_size == (1, 8, 8) and opts.weights_only is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.arch = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"arch_args": "{in_chans: 1"}, "not valid JSON"),
        ({"arch_args": "[1]"}, "JSON object"),
        ({"num_classes": 0}, "num_classes"),
        ({"mean": [0.5]}, "both mean and std"),
        ({"mean": [0.5, 0.5], "std": [0.5]}, "one per channel"),
        ({"mean": [0.5], "std": [0.0]}, "std must be positive"),
        ({"input_size": []}, "(F,) for vectors"),  # any rank is a shape, but not none
        ({"input_size": [1, 0, 8]}, "(C, H, W) for images"),
        ({"input_size": [1, 40.0]}, "(C, L) for signals"),
        ({"arch": ""}, "arch"),
    ],
)
def test_load_options_refuse_malformed_values(kwargs: dict, words: str) -> None:
    from wciaudit.config import LoadOptions

    with pytest.raises(ConfigError) as info:
        LoadOptions(**kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_an_unset_norm_is_checked_when_the_threat_model_is_resolved() -> None:
    cfg = ScanConfig(eps=2.0)  # L2 from a checkpoint's metadata would allow it
    assert cfg.norm is None and not cfg.threat_model_set
    with pytest.raises(ConfigError, match="larger than the data range"):
        cfg.with_default_threat_model()
    assert ScanConfig().with_default_threat_model().to_dict()["eps_text"] == "8/255"
    assert ScanConfig().to_dict()["eps"] is None and ScanConfig().to_dict()["norm"] is None


def test_help_of_each_settings_class_lists_every_field_with_its_text() -> None:
    """The docstring's Attributes section is made from the fields: help(ScanConfig) and the
    API docs show each field's help text, default and range, the text --help shows."""
    from dataclasses import fields

    from wciaudit.config import LoadOptions
    from wciaudit.setting import help_of

    for cls in (ScanConfig, LoadOptions):
        doc = " ".join(cls.__doc__.split())
        for f in fields(cls):
            assert f" {f.name}: {' '.join(help_of(f).split())} (default " in doc, f.name
    doc = " ".join(ScanConfig.__doc__.split())
    assert "hessian_samples: Train examples the Hessian" in doc
    assert "(default 1000; an integer in [1, 100000000])" in doc
    assert "sampled-label Gauss-Newton (mc-ggn;" in doc  # every route, as --help lists them
