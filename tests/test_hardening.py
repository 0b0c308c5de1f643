"""Hostile and broken inputs: exit 2 with one line, no traceback, no output touched.

The corpus of bad inputs is generated at test time by ``tests/corpus/make_corpus.py``.
Also here: property tests of the parsers and the JSON round trip, Ctrl-C during a real
scan, determinism of two scans, the out-of-memory retry, and the memory limit.
"""

from __future__ import annotations

import importlib
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runner import invoke_in
from corpus.make_corpus import CNN, CNN_ARCH, PREEXISTING, TINY, Case, build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from wciaudit import checkpoints, retry
from wciaudit.config import ScanConfig, parse_eps
from wciaudit.errors import ConfigError
from wciaudit.gate import load_gate_config
from wciaudit.result import AuditResult, LayerResult, Metrics, PacBayes

ROOT = Path(__file__).resolve().parents[1]
RESNET = ROOT / "sample_models" / "digits_resnet_pgd.safetensors"
# the module, not the function of the same name that wciaudit exports
scan_module = importlib.import_module("wciaudit.pipeline")
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, build(root)


def _workdir(root: Path, case: Case) -> Path:
    cwd = root / "runs" / case.name
    cwd.mkdir(parents=True)
    for name, text in {**PREEXISTING, **case.cwd_files}.items():
        (cwd / name).write_text(text)
    return cwd


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _invoke(args: list[str], cwd: Path) -> tuple[int, str, str]:
    return invoke_in(cwd, args)


def _problems(case: Case, code: int, stderr: str, before: dict, after: dict) -> list[str]:
    lines = stderr.splitlines()
    found = []
    if code != 2:
        found.append(f"exit code {code}")
    if "Traceback" in stderr:
        found.append("a traceback")
    if len(lines) != 1 or not lines[0].startswith("wciaudit: error: ") or not lines[0][17:].strip():
        found.append(f"stderr is not one 'wciaudit: error:' line: {stderr!r}")
    elif case.keyword.lower() not in lines[0].lower():
        found.append(f"message lacks {case.keyword!r}: {lines[0]!r}")
    if after != before:
        found.append(f"output folder changed: {sorted(before)} -> {sorted(after)}")
    if case.marker is not None and case.marker.exists():
        found.append("the checkpoint's code was run")
    return found


def test_corpus_is_large_enough(corpus: tuple[Path, list[Case]]) -> None:
    _, cases = corpus
    assert len(cases) >= 30
    assert len({c.name for c in cases}) == len(cases)


def test_every_bad_input_exits_2_with_one_line_and_no_output(
    corpus: tuple[Path, list[Case]],
) -> None:
    """One test over the whole corpus, so a failure lists every case that misbehaves."""
    root, cases = corpus
    failures = []
    for case in cases:
        cwd = _workdir(root, case)
        before = _snapshot(cwd)
        code, _, stderr = _invoke(case.argv(cwd), cwd)
        problems = _problems(case, code, stderr, before, _snapshot(cwd))
        if problems:
            failures.append(f"{case.name}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "name",
    [
        # a checkpoint's command imports timm as well as torch: over 3 s for the child alone
        pytest.param("header-length-beyond-file", marks=pytest.mark.slow),
        pytest.param("pickle-that-runs-code", marks=pytest.mark.slow),
        "report-future-schema",
    ],
)
def test_bad_input_as_a_real_subprocess(corpus: tuple[Path, list[Case]], name: str) -> None:
    root, cases = corpus
    case = next(c for c in cases if c.name == name)
    cwd = root / "subprocess" / name
    cwd.mkdir(parents=True)
    for file, text in {**PREEXISTING, **case.cwd_files}.items():
        (cwd / file).write_text(text)
    before = _snapshot(cwd)
    proc = subprocess.run(
        [sys.executable, "-m", "wciaudit", *case.argv(cwd)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert _problems(case, proc.returncode, proc.stderr, before, _snapshot(cwd)) == []
    assert proc.stdout == ""


def test_checkpoint_larger_than_memory_is_refused_with_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints.memory, "available_memory", lambda: 50_000)
    case = Case(
        "memory",
        [
            "scan",
            str(CNN),
            "--arch",
            str(CNN_ARCH),
            "--weights-only",
            "--json",
            "{out}/result.json",
        ],
        "memory",
    )
    cwd = _workdir(tmp_path, case)
    before = _snapshot(cwd)
    code, _, stderr = _invoke(case.argv(cwd), cwd)
    assert _problems(case, code, stderr, before, _snapshot(cwd)) == []
    assert "94.4 KiB" in stderr or "MiB" in stderr  # the file's size is named
    monkeypatch.setattr(checkpoints.memory, "MAX_CHECKPOINT_BYTES", 1000)
    monkeypatch.setattr(checkpoints.memory, "available_memory", lambda: None)
    code, _, stderr = _invoke(case.argv(cwd), cwd)
    assert code == 2 and "over the limit" in stderr


def test_available_memory_is_positive_where_known() -> None:
    value = checkpoints.available_memory()
    assert value is None or value > 0


# -- property tests ------------------------------------------------------------------------


@given(st.integers(0, 10**6), st.integers(1, 10**6))
def test_eps_fraction_parses_exactly(num: int, den: int) -> None:
    assert parse_eps(f"{num}/{den}") == num / den
    assert parse_eps(f" {num} / {den} ") == num / den


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_eps_decimal_round_trips(value: float) -> None:
    assert parse_eps(repr(value)) == value


@given(st.one_of(st.text(max_size=30), st.floats(), st.integers(), st.booleans(), st.none()))
def test_eps_parser_returns_a_finite_non_negative_number_or_config_error(text) -> None:
    try:
        value = parse_eps(text)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(value, float) and math.isfinite(value) and value >= 0


_TOML_KEYS = st.sampled_from(
    [
        "max_wci",
        "max_gap_loss",
        "max_gap_err",
        "min_robust_acc",
        "max_bound",
        "max_wci_increase",
        "gate_sigmas",
        "baseline",
        "unknown_key",
        "max-wci",
    ]
)
_TOML_VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-10, 10**6).map(str),
    st.sampled_from(
        [
            '"10%"',
            '"-5%"',
            '"abc"',
            "true",
            "[1, 2]",
            "{a = 1}",
            '"base.json"',
            "nan",
            "inf",
            '""',
            "1e400",
        ]
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    entries=st.dictionaries(_TOML_KEYS, _TOML_VALUES, max_size=5),
    pyproject=st.booleans(),
    noise=st.binary(max_size=8),
)
def test_gate_config_loading_gives_a_config_or_a_config_error(
    tmp_path: Path, entries: dict[str, str], pyproject: bool, noise: bytes
) -> None:
    body = "".join(f"{k} = {v}\n" for k, v in entries.items())
    name = "pyproject.toml" if pyproject else "wciaudit.toml"
    path = tmp_path / name
    path.write_bytes(((("[tool.wciaudit]\n") if pyproject else "") + body).encode() + noise)
    try:
        config, found = load_gate_config(tmp_path, path=path)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert found == path
        for key in ("max_wci", "max_gap_loss", "max_gap_err", "max_bound"):
            value = getattr(config, key)
            assert value is None or math.isfinite(value)


_SCAN_SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "eps": st.one_of(st.floats(allow_nan=True), st.text(max_size=8)),
        "steps": st.one_of(st.integers(-5, 20_000), st.booleans(), st.text(max_size=3)),
        "tol": st.floats(allow_nan=True, allow_infinity=True),
        "delta": st.floats(allow_nan=True, allow_infinity=True),
        "batch_size": st.integers(-3, 10**7),
        "restarts": st.integers(-3, 2000),
        "device": st.text(max_size=8),
        "dtype": st.sampled_from(["float32", "float64", "float16", ""]),
        "attack": st.sampled_from(["pgd", "fgsm", "cw", ""]),
        "hessian_samples": st.integers(-3, 10**9),
    },
)


@given(_SCAN_SETTINGS)
def test_scan_config_gives_a_valid_config_or_a_config_error(values: dict) -> None:
    try:
        cfg = ScanConfig.from_dict(values)
    except ConfigError as exc:
        assert str(exc)
    else:
        # an L-inf radius fits the data range (an unset norm is checked once resolved)
        assert cfg.eps is None or cfg.eps >= 0
        assert cfg.norm is None or cfg.eps is None or cfg.eps <= cfg.hi - cfg.lo or cfg.norm == "l2"
        assert 0 < cfg.tol < 1 and cfg.steps >= 1
        # the block written to the JSON reads back as the same settings
        assert ScanConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


_FIGURE = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
_TEXT = st.text(max_size=20)


@st.composite
def _results(draw) -> AuditResult:
    layers = draw(
        st.lists(
            st.builds(
                LayerResult,
                name=_TEXT,
                shape=st.lists(st.integers(0, 512), max_size=4),
                numel=st.integers(0, 10**9),
                frob_norm=st.floats(allow_nan=False, allow_infinity=False),
                trace=_FIGURE,
                trace_se=_FIGURE,
                probes=st.integers(0, 1000),
                method=st.sampled_from(["exact-ggn", "hutchinson", "none"]),
                converged=st.none() | st.booleans(),
            ),
            max_size=4,
        )
    )
    return AuditResult(
        config={"eps": draw(_FIGURE), "seed": draw(st.integers(0, 2**63 - 1)), "note": draw(_TEXT)},
        metrics=Metrics(gap_loss=draw(_FIGURE), robust_acc_test=draw(_FIGURE)),
        layers=layers,
        wci=draw(_FIGURE),
        wci_se=draw(_FIGURE),
        pac_bayes=PacBayes(bound=draw(_FIGURE)),
        notes=draw(st.lists(_TEXT, max_size=3)),
    )


@given(_results())
def test_json_round_trip_is_a_fixed_point(result: AuditResult) -> None:
    text = result.to_json()
    again = AuditResult.from_json(text)
    assert again.to_json() == text
    json.loads(text)  # strict JSON: no NaN or Infinity


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "schema_version",
                "checkpoint",
                "dataset",
                "config",
                "metrics",
                "layers",
                "wci",
                "notes",
                "gate",
                "timings",
                "tool_version",
            ]
        ),
        _JSON,
        max_size=6,
    ),
    st.sampled_from([1, 2, None, "1"]),
)
def test_reading_any_json_gives_a_result_or_a_config_error(d: dict, version) -> None:
    d["schema_version"] = version
    try:
        result = AuditResult.from_json(json.dumps(d))
    except ConfigError as exc:
        assert str(exc)
    else:
        assert result.schema_version == 1


# -- Ctrl-C --------------------------------------------------------------------------------


def _mapped(pid: int, name: str) -> bool:
    try:
        return name in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.slow
def test_ctrl_c_during_a_scan_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGINT once the checkpoint has been read (its file mapped, then released): the
    scan is then attacking, which takes minutes with the default settings."""
    (tmp_path / "keep.json").write_text("old\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wciaudit",
            "scan",
            str(RESNET),
            "--json",
            str(tmp_path / "r.json"),
            "--html",
            str(tmp_path / "r.html"),
            "-q",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not _mapped(proc.pid, RESNET.name) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        while _mapped(proc.pid, RESNET.name) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        assert proc.poll() is None, "the scan ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["wciaudit: error: interrupted; no output was written"]
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]
    assert (tmp_path / "keep.json").read_text() == "old\n"


def test_interrupted_atomic_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the middle of writing the result: the old file stays, no .tmp remains."""
    import wciaudit.result as result_module

    target = tmp_path / "r.json"
    target.write_text("old\n")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(result_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        AuditResult().save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert target.read_text() == "old\n"


# -- determinism -------------------------------------------------------------------------


def _without_timings(text: str) -> str:
    d = json.loads(text)
    d.pop("timings")
    return json.dumps(d, indent=2)


def test_same_seed_gives_byte_identical_json_apart_from_timings(tmp_path: Path) -> None:
    texts = []
    for name in ("a.json", "b.json"):
        code, _, err = _invoke(
            [
                "scan",
                str(CNN),
                "--arch",
                str(CNN_ARCH),
                "--data",
                "sample",
                *TINY,
                "--eps",
                "0.1",
                "--seed",
                "3",
                "--json",
                name,
                "-q",
            ],
            tmp_path,
        )
        assert code == 0, err
        texts.append((tmp_path / name).read_text())
    assert _without_timings(texts[0]) == _without_timings(texts[1])
    # everything but the timings block is byte-identical in the file itself
    strip = [t[: t.index('"timings"')] + t[t.index('"environment"') :] for t in texts]
    assert strip[0] == strip[1]
    assert json.loads(texts[0])["config"]["batch_size_used"] == 128


# -- out of memory ---------------------------------------------------------------------------


def test_retry_halves_the_batch_until_it_fits() -> None:
    seen, notes = [], []

    def work(batch: int) -> str:
        seen.append(batch)
        if batch > 20:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "ok"

    out = retry.run_with_batch_retry(work, 128, on_retry=lambda a, b, m: notes.append((a, b, m)))
    assert out == ("ok", 16) and seen == [128, 64, 32, 16]
    assert [n[:2] for n in notes] == [(128, 64), (64, 32), (32, 16)]
    assert "out of memory" in notes[0][2]


def test_retry_leaves_other_errors_alone_and_stops_at_min_batch() -> None:
    def broken(batch: int) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        retry.run_with_batch_retry(broken, 64)

    def never_fits(batch: int) -> None:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(ConfigError, match="out of memory even at batch size 4"):
        retry.run_with_batch_retry(never_fits, 16, min_batch=4)
    assert retry.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not retry.is_out_of_memory(ValueError("out of memory"))


def test_scan_retries_with_half_the_batch_after_an_injected_oom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first attack batch of 128 fails as a GPU would; the scan goes on with 64 and
    says so in the notes, and every later stage uses 64."""
    attack_module = importlib.import_module("wciaudit.pipeline.attack")
    stage = importlib.import_module("wciaudit.pipeline.measure")
    real_attack, real_traces = attack_module.run_attack, stage.layer_traces
    sizes: dict[str, list[int]] = {"attack": [], "traces": []}

    def attack(net, x, y, cfg, device, **kw):
        sizes["attack"].append(cfg.batch_size)
        if cfg.batch_size > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_attack(net, x, y, cfg, device, **kw)

    def traces(objective, config, **kw):
        sizes["traces"].append(objective.batch_size)
        return real_traces(objective, config, **kw)

    monkeypatch.setattr(attack_module, "run_attack", attack)
    monkeypatch.setattr(stage, "layer_traces", traces)
    result = scan_module.scan(
        str(CNN),
        "sample",
        arch=str(CNN_ARCH),
        eps=0.1,
        steps=1,
        train_samples=40,
        test_samples=40,
        hessian_samples=20,
        masking_samples=0,
        attack_spread=False,
    )
    assert sizes == {"attack": [128, 64, 64], "traces": [64]}
    assert result.config["batch_size"] == 128 and result.config["batch_size_used"] == 64
    assert [n for n in result.notes if n.startswith("out of memory")] == [
        "out of memory at batch size 128; retried with 64 "
        "(CUDA out of memory. Tried to allocate 1.00 GiB)"
    ]
    assert result.wci is not None and result.wci > 0


@pytest.mark.slow
def test_ctrl_c_during_track_then_rerun_resumes(tmp_path: Path) -> None:
    """A real SIGINT once the first checkpoint's result is cached: exit 130, no partial
    file anywhere; the next run scans only what was not finished."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    for epoch in (1, 3, 6, 10):
        name = f"epoch_{epoch}.safetensors"
        shutil.copy(ROOT / "sample_models" / "run_digits_cnn" / name, run / name)
    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    args = [
        "track",
        str(run),
        "--arch",
        str(CNN_ARCH),
        "--data",
        "sample",
        *TINY,
        "--eps",
        "0.1",
        "--cache",
        str(cache),
        "--json",
        str(out / "t.json"),
        "--output",
        str(out / "t.html"),
        "-q",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "wciaudit", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(cache.glob("*.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    finished = {p.name: p.read_bytes() for p in cache.glob("*.json")}
    assert 1 <= len(finished) < 4
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    assert list(out.iterdir()) == []

    code, _, err = _invoke(args, tmp_path)
    assert code == 0, err
    assert len(list(cache.glob("*.json"))) == 4
    for name, data in finished.items():  # reused, not scanned again
        assert (cache / name).read_bytes() == data
    assert json.loads((out / "t.json").read_text())
