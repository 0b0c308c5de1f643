"""Tests of wciaudit.gate: every gate passing and failing, the noise rule, baselines,
config discovery and precedence, malformed config files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wciaudit.errors import ConfigError
from wciaudit.gate import (
    GateConfig,
    Increase,
    apply_gates,
    find_config_file,
    load_baseline,
    load_gate_config,
    noise_verdict,
    parse_increase,
)
from wciaudit.result import AttackInfo, AuditResult, DatasetInfo, Metrics, PacBayes

DOCS = Path(__file__).resolve().parents[1] / "docs" / "ci.md"


def _result(**over) -> AuditResult:
    """A hand-built result: WCI 12.3 ± 0.4, test split present, bound without SE."""
    metrics = dict(
        gap_loss=0.9,
        gap_loss_se=0.1,
        gap_err=0.2,
        gap_err_se=0.02,
        robust_acc_test=0.3,
        robust_acc_test_se=0.02,
    )
    metrics.update(over.pop("metrics", {}))
    base = dict(
        wci=12.3,
        wci_se=0.4,
        metrics=Metrics(**metrics),
        pac_bayes=PacBayes(bound=7.14),
        dataset=DatasetInfo(name="digits", n_train=200, n_test=200),
        config={"eps": 0.1, "norm": "linf", "attack": "pgd", "steps": 3},
    )
    base.update(over)
    return AuditResult(**base)


def _only(gate):
    assert len(gate.checks) == 1
    return gate.checks[0]


# -- every gate, passing and failing ---------------------------------------------------------

GATES = [
    # key, threshold that passes, threshold that fails, expected failure message
    ("max_wci", 20.0, 10.0, "wci = 12.3 ± 0.4 exceeds --max-wci 10 by 5.8 SE (limit 2 SE)"),
    (
        "max_gap_loss",
        1.0,
        0.5,
        "gap_loss = 0.9 ± 0.1 exceeds --max-gap-loss 0.5 by 4.0 SE (limit 2 SE)",
    ),
    (
        "max_gap_err",
        0.3,
        0.1,
        "gap_err = 0.2 ± 0.02 exceeds --max-gap-err 0.1 by 5.0 SE (limit 2 SE)",
    ),
    (
        "min_robust_acc",
        0.25,
        0.4,
        "robust_acc_test = 0.3 ± 0.02 is below --min-robust-acc 0.4 by 5.0 SE (limit 2 SE)",
    ),
    (
        "max_bound",
        8.0,
        5.0,
        "bound = 7.14 exceeds --max-bound 5 by 2.14 (no SE, taken as 0: any excess fails)",
    ),
]


@pytest.mark.parametrize(("key", "ok", "bad", "message"), GATES, ids=[g[0] for g in GATES])
def test_each_gate_passes_and_fails(key, ok, bad, message):
    passed = apply_gates(_result(), GateConfig(**{key: ok}))
    assert passed.passed and passed.failures == []
    assert _only(passed)["status"] == "pass"
    failed = apply_gates(_result(), GateConfig(**{key: bad}))
    assert not failed.passed
    assert failed.failures == [message]
    check = _only(failed)
    assert check["status"] == "fail" and check["source"] == "default"
    assert check["threshold"] == bad and check["sigmas"] == 2.0


def test_messages_in_the_docs_are_the_real_ones():
    """Every example failure line in docs/ci.md is what the code prints."""
    result = _result()
    file_config = GateConfig(max_wci=10.0, max_gap_loss=0.5, min_robust_acc=0.4, max_bound=5.0)
    real = apply_gates(
        result, file_config.updated({"max_gap_err": 0.1}, "/repo/pyproject.toml")
    ).failures
    real.append(
        _increase(_result(wci=12.3, wci_se=0.1), _result(wci=10.0, wci_se=0.1), "10%")["message"]
    )
    no_test = _result(dataset=DatasetInfo(name="digits", n_train=200), metrics={"gap_loss": None})
    real += apply_gates(no_test, GateConfig(max_gap_loss=0.5)).failures
    checks = [{"name": "deterministic-output", "passed": False}, {"name": "more-steps"}]
    checks += [{"name": "large-eps", "passed": False}]
    masked = _result(attacks=AttackInfo(masking={"checks": checks}))
    real += apply_gates(masked, GateConfig(fail_on_masking=True)).failures
    documented = re.findall(
        r"^wciaudit: gate failed: (.*)$", DOCS.read_text(encoding="utf-8"), re.M
    )
    assert documented and set(documented) <= set(real)


def test_no_gates_pass_with_no_checks():
    gate = apply_gates(_result(), GateConfig())
    assert gate.passed and gate.checks == [] and not GateConfig().has_gates


def test_check_records_value_se_and_margin():
    check = _only(apply_gates(_result(), GateConfig(max_wci=10.0)))
    assert check["figure"] == "wci" and check["op"] == "<="
    assert check["value"] == 12.3 and check["se"] == 0.4
    assert check["margin_sigmas"] == pytest.approx(2.3 / 0.4)
    assert check["option"] == "--max-wci"


def test_value_equal_to_threshold_passes():
    assert _only(apply_gates(_result(wci_se=0.0), GateConfig(max_wci=12.3)))["status"] == "pass"


# -- the noise rule --------------------------------------------------------------------------


def test_within_noise_passes_and_says_so():
    gate = apply_gates(_result(wci=10.5), GateConfig(max_wci=10.0))
    check = _only(gate)
    assert gate.passed and check["status"] == "within-noise"
    assert "within noise" in check["message"]
    assert (
        check["message"]
        == "wci = 10.5 ± 0.4 exceeds --max-wci 10 by 1.2 SE: within noise (limit 2 SE)"
    )


def test_min_gate_within_noise():
    check = _only(apply_gates(_result(), GateConfig(min_robust_acc=0.33)))
    assert check["status"] == "within-noise" and check["margin_sigmas"] == pytest.approx(1.5)


def test_gate_sigmas_moves_the_line():
    # 2.3 / 0.4 = 5.75 SE beyond the threshold
    assert (
        _only(apply_gates(_result(), GateConfig(max_wci=10.0, gate_sigmas=6.0)))["status"]
        == "within-noise"
    )
    assert (
        _only(apply_gates(_result(), GateConfig(max_wci=10.0, gate_sigmas=5.0)))["status"] == "fail"
    )


def test_zero_se_fails_on_any_excess():
    gate = apply_gates(_result(wci=10.01, wci_se=0.0), GateConfig(max_wci=10.0))
    assert not gate.passed
    assert gate.failures == [
        "wci = 10.01 ± 0 exceeds --max-wci 10 by 0.01 (SE 0: any excess fails)"
    ]


def test_missing_se_is_taken_as_zero():
    check = _only(apply_gates(_result(wci_se=None), GateConfig(max_wci=12.0)))
    assert check["status"] == "fail" and "no SE, taken as 0" in check["message"]


@given(
    excess=st.floats(-1e6, 1e6),
    se=st.floats(0, 1e3),
    s1=st.floats(0, 10),
    s2=st.floats(0, 10),
)
def test_noise_rule_is_monotonic_in_sigmas(excess, se, s1, s2):
    lo, hi = sorted((s1, s2))
    rank = {"pass": 0, "within-noise": 1, "fail": 2}
    # more sigmas never make a gate stricter
    assert rank[noise_verdict(excess, se, hi)] <= rank[noise_verdict(excess, se, lo)]
    assert (noise_verdict(excess, se, lo) == "pass") == (excess <= 0)


@given(
    value=st.floats(0, 1),
    threshold=st.floats(0, 1),
    se=st.floats(0, 1),
    sigmas=st.floats(0, 5),
)
def test_min_gate_mirrors_max_gate(value, threshold, se, sigmas):
    """min_robust_acc t on v decides as max_wci -t on -v: the rule is mirrored exactly."""
    as_min = _only(
        apply_gates(
            _result(metrics={"robust_acc_test": value, "robust_acc_test_se": se}),
            GateConfig(min_robust_acc=threshold, gate_sigmas=sigmas),
        )
    )
    as_max = _only(
        apply_gates(
            _result(wci=-value, wci_se=se), GateConfig(max_wci=-threshold, gate_sigmas=sigmas)
        )
    )
    assert as_min["status"] == as_max["status"] == noise_verdict(threshold - value, se, sigmas)


# -- null figures ----------------------------------------------------------------------------


def test_null_figure_fails_with_reason():
    no_test = _result(
        dataset=DatasetInfo(name="digits", n_train=200, n_test=None),
        metrics={"gap_loss": None, "gap_loss_se": None, "robust_acc_test": None},
    )
    gate = apply_gates(no_test, GateConfig(max_gap_loss=0.5, min_robust_acc=0.1))
    assert not gate.passed
    assert gate.failures == [
        "gap_loss is null (no test split): cannot check --max-gap-loss",
        "robust_acc_test is null (no test split): cannot check --min-robust-acc",
    ]
    weights_only = AuditResult(dataset=DatasetInfo())
    assert apply_gates(weights_only, GateConfig(max_wci=1.0)).failures == [
        "wci is null (no data: weights-only scan): cannot check --max-wci"
    ]


# -- baseline --------------------------------------------------------------------------------


def _increase(result, base, text, **extra):
    config = GateConfig(baseline=Path("base.json")).updated(
        {"max_wci_increase": text, **extra}, "cli"
    )
    return _only(apply_gates(result, config, base))


def test_relative_increase():
    base = _result(wci=10.0, wci_se=0.1)
    check = _increase(_result(wci=12.3, wci_se=0.1), base, "10%")
    assert check["status"] == "fail" and check["limit"] == pytest.approx(11.0)
    assert check["se_diff"] == pytest.approx(math.hypot(0.1, 1.1 * 0.1))
    assert check["message"] == (
        "wci = 12.3 ± 0.1 exceeds --max-wci-increase 10% over baseline 10 ± 0.1 (limit 11) "
        "by 8.7 SE (limit 2 SE)"
    )
    assert _increase(_result(wci=10.9, wci_se=0.1), base, "10%")["status"] == "pass"
    assert _increase(_result(wci=11.2, wci_se=0.1), base, "10%")["status"] == "within-noise"


def test_absolute_increase():
    base = _result(wci=10.0, wci_se=0.0)
    assert _increase(_result(wci=10.4, wci_se=0.0), base, 0.5)["status"] == "pass"
    check = _increase(_result(wci=10.6, wci_se=0.0), base, "0.5")
    assert check["status"] == "fail" and check["limit"] == pytest.approx(10.5)
    assert not check["relative"]


def test_increase_with_null_baseline_fails():
    check = _increase(_result(), AuditResult(), "10%")
    assert check["status"] == "fail"
    assert (
        check["message"]
        == "baseline wci is null (no data: weights-only scan): cannot check --max-wci-increase"
    )


def test_increase_warns_when_settings_differ():
    base = _result(wci=12.0, config={"eps": 0.03, "norm": "linf", "attack": "pgd", "steps": 3})
    check = _increase(_result(), base, "10%")
    assert check["warnings"] == ["eps differs from the baseline (0.1 vs 0.03)"]


def test_increase_needs_a_baseline():
    config = GateConfig().updated({"max_wci_increase": "10%"}, "cli")
    with pytest.raises(ConfigError, match="needs a baseline"):
        load_baseline(config)
    with pytest.raises(ConfigError, match="needs a baseline"):
        apply_gates(_result(), config)


def test_missing_baseline_file_is_a_config_error(tmp_path):
    config = GateConfig().updated({"baseline": str(tmp_path / "nope.json")}, "cli")
    with pytest.raises(ConfigError, match=r"baseline \(from cli\): result file not found"):
        load_baseline(config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10%", Increase(0.10, True)),
        (" 2.5 % ", Increase(0.025, True)),
        ("0.5", Increase(0.5, False)),
        (3, Increase(3.0, False)),
        ("1e-1", Increase(0.1, False)),
    ],
)
def test_parse_increase(text, expected):
    got = parse_increase(text)
    assert got.relative == expected.relative and got.amount == pytest.approx(expected.amount)


@pytest.mark.parametrize("bad", ["-10%", "ten", "10%%", "", True, None, [1], "nan", float("inf")])
def test_parse_increase_rejects(bad):
    with pytest.raises(ConfigError, match="max_wci_increase"):
        parse_increase(bad)


@given(st.floats(0, 1e4, allow_nan=False))
def test_parse_increase_round_trips(percent):
    text = f"{percent!r}%"
    inc = parse_increase(text)
    assert inc.relative and inc.amount == pytest.approx(percent / 100)
    assert parse_increase(str(inc)).amount == pytest.approx(inc.amount, rel=1e-5, abs=1e-12)


# -- config files ----------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_discovery_walks_upward(tmp_path):
    cfg = _write(
        tmp_path / "pyproject.toml", "[tool.wciaudit]\nmax_wci = 5\nmax_wci_increase = '10%'\n"
    )
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    config, found = load_gate_config(deep)
    assert found == cfg.resolve()
    assert config.max_wci == 5.0 and config.max_wci_increase == Increase(0.1, True)
    assert config.source("max_wci") == str(cfg.resolve())
    assert config.source("gate_sigmas") == "default"


def test_pyproject_without_table_is_skipped(tmp_path):
    top = _write(tmp_path / "wciaudit.toml", "max_bound = 3\n")
    _write(tmp_path / "sub" / "pyproject.toml", "[project]\nname = 'x'\n")
    assert find_config_file(tmp_path / "sub") == top.resolve()


def test_wciaudit_toml_wins_in_one_folder(tmp_path):
    _write(tmp_path / "pyproject.toml", "[tool.wciaudit]\nmax_wci = 1\n")
    own = _write(tmp_path / "wciaudit.toml", "max_wci = 2\n")
    config, found = load_gate_config(tmp_path)
    assert found == own.resolve() and config.max_wci == 2.0


def test_nearest_file_wins(tmp_path):
    _write(tmp_path / "wciaudit.toml", "max_wci = 1\n")
    near = _write(tmp_path / "sub" / "pyproject.toml", "[tool.wciaudit]\nmax_wci = 3\n")
    config, found = load_gate_config(tmp_path / "sub")
    assert found == near.resolve() and config.max_wci == 3.0


def test_no_config_file(tmp_path):
    config, found = load_gate_config(tmp_path)
    if found is not None:  # a folder above the tmp folder holds one: not ours to judge
        pytest.skip(f"a config file above the test folder: {found}")
    assert config == GateConfig() and not config.has_gates


def test_explicit_path(tmp_path):
    cfg = _write(tmp_path / "ci" / "gates.toml", "min_robust_acc = 0.4\n")
    config, found = load_gate_config(tmp_path, path=cfg)
    assert found == cfg and config.min_robust_acc == 0.4
    with pytest.raises(ConfigError, match="config file not found"):
        load_gate_config(tmp_path, path=tmp_path / "missing.toml")


def test_flags_override_file_key_by_key(tmp_path):
    cfg = _write(tmp_path / "wciaudit.toml", "max_wci = 5\nmax_bound = 3\ngate_sigmas = 3\n")
    config, _ = load_gate_config(tmp_path)
    config = config.updated({"max_wci": 7.0, "max_bound": None, "gate_sigmas": None}, "cli")
    assert config.max_wci == 7.0 and config.source("max_wci") == "cli"
    assert config.max_bound == 3.0 and config.source("max_bound") == str(cfg.resolve())
    assert config.gate_sigmas == 3.0
    effective = config.to_dict()
    assert effective["max_wci"] == {"value": 7.0, "source": "cli"}
    assert effective["gate_sigmas"] == {"value": 3.0, "source": str(cfg.resolve())}


def test_sources_reach_the_checks(tmp_path):
    cfg = _write(tmp_path / "pyproject.toml", "[tool.wciaudit]\nmax_gap_err = 0.1\n")
    config, _ = load_gate_config(tmp_path)
    gate = apply_gates(_result(), config.updated({"max_wci": 10.0}, "cli"))
    sources = {c["figure"]: c["source"] for c in gate.checks}
    assert sources == {"wci": "cli", "gap_err": str(cfg.resolve())}
    assert (
        "gap_err = 0.2 ± 0.02 exceeds --max-gap-err 0.1 (from pyproject.toml) by 5.0 SE (limit 2 SE)"
        in gate.failures
    )


def test_baseline_path_is_relative_to_the_config_file(tmp_path):
    _write(tmp_path / "wciaudit.toml", "baseline = 'audit/base.json'\nmax_wci_increase = 0.5\n")
    (tmp_path / "sub").mkdir()
    config, _ = load_gate_config(tmp_path / "sub")
    assert config.baseline == tmp_path.resolve() / "audit" / "base.json"
    (tmp_path / "audit").mkdir()
    _result().save(config.baseline)
    assert load_baseline(config).wci == 12.3


MALFORMED = [
    (
        "wciaudit.toml",
        "max_wci = 'ten'\n",
        r"wciaudit.toml: key 'max_wci' must be a number, got 'ten' \(str\)",
    ),
    (
        "wciaudit.toml",
        "max_wcii = 1\n",
        r"wciaudit.toml: unknown key 'max_wcii'; allowed keys: max_wci",
    ),
    (
        "pyproject.toml",
        "[tool.wciaudit]\nmin_robust_acc = 40\n",
        r"pyproject.toml: \[tool.wciaudit\] key 'min_robust_acc' is a fraction",
    ),
    (
        "pyproject.toml",
        "[tool.wciaudit]\ngate_sigmas = -1\n",
        r"pyproject.toml: \[tool.wciaudit\] key 'gate_sigmas' must be >= 0",
    ),
    (
        "pyproject.toml",
        "[tool.wciaudit]\nmax_bound = true\n",
        r"key 'max_bound' must be a number, got True",
    ),
    (
        "pyproject.toml",
        "[tool.wciaudit]\nmax_wci_increase = '10 percent'\n",
        r"key 'max_wci_increase' must be a percentage",
    ),
    ("pyproject.toml", "[tool.wciaudit]\nbaseline = 3\n", r"key 'baseline' must be a path"),
    (
        "pyproject.toml",
        "[tool]\nwciaudit = 3\n",
        r"pyproject.toml: \[tool.wciaudit\] must be a table",
    ),
    ("wciaudit.toml", "max_wci = \n", r"wciaudit.toml: invalid TOML"),
    ("pyproject.toml", "[tool.wciaudit\n", r"pyproject.toml: invalid TOML"),
]


@pytest.mark.parametrize(("name", "text", "message"), MALFORMED)
def test_malformed_config_names_file_and_key(tmp_path, name, text, message):
    path = _write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_gate_config(tmp_path)
    assert str(info.value).startswith(str(path.resolve()))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_wci", float("nan"), "--max-wci must be a finite number"),
        ("gate_sigmas", -2.0, "--gate-sigmas must be >= 0"),
        ("min_robust_acc", 1.5, "--min-robust-acc is a fraction"),
        ("max_wci_increase", "x", "--max-wci-increase must be a percentage"),
    ],
)
def test_bad_flags(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        GateConfig().updated({key: value}, "cli")


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        GateConfig().max_wci = 1.0  # type: ignore[misc]


def test_module_example_runs():
    import doctest

    import wciaudit.gate as module

    assert doctest.testmod(module).failed == 0


def test_gate_check_round_trips_through_json():
    """Gate.checks hold GateCheck.to_dict(); from_dict reads them back unchanged."""
    from wciaudit.gate import GateCheck, check_gates

    base = _result(wci=10.0, wci_se=0.1)
    config = GateConfig(max_wci=10.0, max_bound=5.0).updated(
        {"max_wci_increase": "10%", "baseline": "base.json"}, "cli"
    )
    checks = check_gates(_result(), config, base)
    assert [c.option for c in checks] == ["--max-wci", "--max-bound", "--max-wci-increase"]
    for check in checks:
        d = check.to_dict()
        assert GateCheck.from_dict(d) == check
        assert d["passed"] is check.passed and d["message"] == check.message
    plain, _, increase = (c.to_dict() for c in checks)
    assert "baseline_value" not in plain and "limit" not in plain
    assert increase["baseline_value"] == 10.0 and isinstance(increase["warnings"], list)
    old = GateCheck.from_dict({"name": "custom", "passed": False, "value": "n/a"})
    assert old.status == "fail" and old.row()["name"] == "custom"
