"""The whole scan against exact computations on a tiny model (SPEC: every figure)."""

from __future__ import annotations

import ast
import importlib
import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from reference import dense_traces
from torch import nn

from wciaudit import ScanConfig, Splits, scan
from wciaudit.attacks.pgd import attack_split
from wciaudit.bounds import pac_bayes_terms
from wciaudit.config import LoadOptions
from wciaudit.data import stratified_subset
from wciaudit.errors import CheckpointError, ConfigError
from wciaudit.model import AuditedModel


def _tiny(act: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), act(), nn.Linear(12, 3))


def _splits(n_train: int = 60, n_test: int = 50) -> Splits:
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(3, 1, 4, 4, generator=g)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 3
        x = (centers[y] + 0.15 * torch.randn(n, 1, 4, 4, generator=g)).clamp(0, 1)
        return x, y

    (xa, ya), (xb, yb) = make(n_train), make(n_test)
    return Splits(
        name="toy",
        x_train=xa,
        y_train=ya,
        x_test=xb,
        y_test=yb,
        num_classes=3,
        source="generated",
        n_train_total=n_train,
        n_test_total=n_test,
    )


CFG = dict(
    eps=0.1, steps=5, seed=3, hessian_samples=40, dtype="float64", max_probes=300, masking_samples=0
)


@pytest.mark.parametrize("act", [nn.ReLU, nn.GELU])
def test_scan_figures_equal_exact_computations(act: type[nn.Module]) -> None:
    model, splits = _tiny(act), _splits()
    result = scan(model, splits, mean=[0.5], std=[0.25], **CFG)
    cfg = ScanConfig(**CFG)

    # the same adversarial examples, recomputed independently of the scan
    net = AuditedModel(model, [0.5], [0.25]).double().eval()
    x_adv = attack_split(net, splits.x_train, splits.y_train, cfg, torch.device("cpu"), stream=0)
    x_adv_test = attack_split(net, splits.x_test, splits.y_test, cfg, torch.device("cpu"), stream=1)
    with torch.no_grad():
        robust_loss = F.cross_entropy(net(x_adv), splits.y_train).item()
        robust_loss_test = F.cross_entropy(net(x_adv_test), splits.y_test).item()
        # robust: classified right both as it is and at the attack's point
        robust = (net(x_adv).argmax(1) == splits.y_train) & (
            net(splits.x_train.double()).argmax(1) == splits.y_train
        )
        robust_acc = robust.double().mean().item()
    m = result.metrics
    assert m.robust_loss_train == pytest.approx(robust_loss, rel=1e-12)
    assert m.robust_acc_train == pytest.approx(robust_acc)
    # PGD gives both figures: one entry, the same accuracy
    assert list(result.attacks.robust_acc) == ["pgd"]
    assert result.attacks.robust_acc["pgd"]["train"] == pytest.approx(robust_acc)
    assert m.gap_loss == pytest.approx(robust_loss_test - robust_loss, rel=1e-9)
    assert m.gap_loss_se > 0 and m.robust_acc_train_se == pytest.approx(
        math.sqrt(robust_acc * (1 - robust_acc) / 60)
    )

    # per-layer traces against the dense Hessian of the mean CE on the Hessian subset
    idx = stratified_subset(splits.y_train, 40, cfg.seed)
    names = ["model.1.weight", "model.3.weight"]
    exact = dense_traces(net, x_adv[idx], splits.y_train[idx], names)
    assert result.dataset.hessian_samples == 40
    for layer in result.layers:
        ref = exact[f"model.{layer.name}"]
        if layer.method == "exact-ggn":
            assert layer.trace == pytest.approx(ref, rel=1e-6)
        else:
            assert abs(layer.trace - ref) < 4 * layer.trace_se
        assert layer.frob_norm == pytest.approx(
            dict(model.named_parameters())[layer.name].norm().item()
        )
    methods = [la.method for la in result.layers]
    assert methods == (
        ["exact-ggn", "exact-ggn"] if act is nn.ReLU else ["hutchinson", "exact-ggn"]
    )

    # WCI and the bound from the reported layers
    wci = sum(la.frob_norm * math.sqrt(max(la.trace, 0)) for la in result.layers)
    assert result.wci == pytest.approx(wci)
    terms = pac_bayes_terms(robust_loss, wci, 60, 0.05)
    assert result.pac_bayes.bound == pytest.approx(terms.bound)
    assert result.pac_bayes.c == pytest.approx(terms.c)


def test_scan_leaves_the_model_bit_for_bit_and_in_its_mode() -> None:
    model, splits = _tiny(), _splits()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scan(model, splits, **CFG)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_same_seed_same_json_apart_from_timings() -> None:
    splits = _splits()
    a = scan(_tiny(nn.GELU), splits, **CFG).to_dict()
    b = scan(_tiny(nn.GELU), splits, **CFG).to_dict()
    for d in (a, b):
        d.pop("timings")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = scan(_tiny(nn.GELU), splits, **{**CFG, "seed": 4}).to_dict()
    assert c["metrics"] != a["metrics"] or c["layers"] != a["layers"]


def test_one_split_reports_curvature_and_a_null_gap() -> None:
    full = _splits()
    only_train = Splits(
        name="toy",
        x_train=full.x_train,
        y_train=full.y_train,
        x_test=None,
        y_test=None,
        num_classes=3,
        source="generated",
        n_train_total=60,
        n_test_total=None,
    )
    result = scan(_tiny(), only_train, **CFG)
    assert result.metrics.gap_loss is None and result.metrics.robust_acc_test is None
    assert result.wci is not None and result.pac_bayes.bound is not None
    d = json.loads(result.to_json())
    assert d["metrics"]["gap_loss"] is None and d["dataset"]["n_test"] is None


def test_weights_only_has_every_data_figure_null() -> None:
    result = scan(_tiny(), None, weights_only=True)
    d = result.to_dict()
    assert d["wci"] is None and d["pac_bayes"]["bound"] is None
    assert all(v is None for v in d["metrics"].values())
    assert [la["name"] for la in d["layers"]] == ["1.weight", "3.weight"]
    assert all(la["trace"] is None for la in d["layers"])
    assert {o["name"] for o in d["other_parameters"]} == {"1.bias", "3.bias"}


def test_schema_v1_keys_are_all_present() -> None:
    d = scan(_tiny(), _splits(), **CFG).to_dict()
    assert d["schema_version"] == 1
    for key in (
        "tool_version",
        "checkpoint",
        "dataset",
        "config",
        "metrics",
        "layers",
        "wci",
        "wci_se",
        "pac_bayes",
        "gate",
        "timings",
    ):
        assert key in d
    for key in (
        "eps",
        "attack",
        "steps",
        "step_size",
        "restarts",
        "seed",
        "tol",
        "max_probes",
        "hessian_samples",
        "delta",
        "device",
    ):
        assert key in d["config"]
    for key in (
        "clean_acc_train",
        "clean_acc_test",
        "clean_loss_train",
        "clean_loss_test",
        "robust_acc_train",
        "robust_acc_test",
        "robust_loss_train",
        "robust_loss_test",
        "gap_loss",
        "gap_err",
    ):
        assert key in d["metrics"]
    for key in (
        "name",
        "shape",
        "numel",
        "frob_norm",
        "trace",
        "trace_se",
        "probes",
        "method",
        "converged",
        "wci_term",
        "flag",
    ):
        assert key in d["layers"][0]
    for key in ("c", "curvature_term", "kl_term", "confidence_term", "bound", "delta", "m"):
        assert key in d["pac_bayes"]
    for key in ("passed", "failures"):
        assert key in d["gate"]
    for key in ("load_s", "attack_s", "trace_s", "total_s"):
        assert key in d["timings"]


# --- the threat model, the loading options and what the stages pass on -----------------
SAMPLE = Path(__file__).parents[1] / "sample_models" / "digits_resnet_pgd.safetensors"


def test_threat_model_from_checkpoint_metadata_unless_flagged() -> None:
    meta = scan(SAMPLE, weights_only=True).config  # the sample says eps 0.1, no norm
    assert meta["eps"] == pytest.approx(0.1) and meta["norm"] == "linf"
    assert meta["threat_model_source"] == {"eps": "checkpoint metadata", "norm": "default"}
    flag = scan(SAMPLE, weights_only=True, eps="8/255", norm="l2").config
    assert flag["eps"] == pytest.approx(8 / 255) and flag["norm"] == "l2"
    assert flag["threat_model_source"] == {"eps": "flag", "norm": "flag"}
    unset = scan(SAMPLE, weights_only=True, config=ScanConfig(eps=0.2), eps=None).config
    assert (
        unset["eps"] == pytest.approx(0.1)
        and unset["threat_model_source"]["eps"] == "checkpoint metadata"
    )
    module = scan(_tiny(), weights_only=True).config
    assert module["eps"] == pytest.approx(8 / 255)
    assert module["threat_model_source"] == {"eps": "default", "norm": "default"}


def test_threat_model_norm_from_metadata_and_bad_metadata(tmp_path: Path) -> None:
    net = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(
        net.state_dict(), str(path), {"arch": "test_resnet", "norm": "L2", "eps": "0.5"}
    )
    config = scan(path, weights_only=True).config
    assert config["norm"] == "l2" and config["eps"] == pytest.approx(0.5)
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(net.state_dict(), str(bad), {"arch": "test_resnet", "eps": "big"})
    with pytest.raises(CheckpointError, match="'eps'.*--eps"):
        scan(bad, weights_only=True)
    assert scan(bad, weights_only=True, eps=0.1).config["threat_model_source"]["eps"] == "flag"


def test_load_options_as_one_object_or_keywords_not_both() -> None:
    opts = LoadOptions(mean=[0.5], std=[0.25], weights_only=True)
    a = scan(_tiny(), options=opts).to_dict()
    b = scan(_tiny(), mean=[0.5], std=[0.25], weights_only=True).to_dict()
    for d in (a, b):
        d.pop("timings")
    assert a == b and a["checkpoint"]["mean"] == [0.5]
    with pytest.raises(ConfigError, match="not both"):
        scan(_tiny(), options=opts, mean=[0.5])


def test_curvature_gets_the_population_and_the_memory_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scan_module = importlib.import_module("wciaudit.pipeline.measure")  # the curvature stage

    seen: dict = {}
    real = scan_module.layer_traces

    def traces(objective, config, **kwargs):
        seen.update(objective=objective, config=config)
        return real(objective, config, **kwargs)

    monkeypatch.setattr(scan_module, "layer_traces", traces)
    result = scan(_tiny(), _splits(), memory_bytes=2**22, **CFG)
    objective, config = seen["objective"], seen["config"]
    assert objective.n_population == 60 and objective.n_total == 40 and objective.offset == 0
    assert config.memory_bytes == 2**22
    assert result.config["memory_bytes"] == 2**22


def test_scan_has_no_default_argument_lambdas() -> None:
    folder = Path(importlib.import_module("wciaudit.pipeline").__file__).parent
    trees = [ast.parse(path.read_text()) for path in sorted(folder.glob("*.py"))]
    lambdas = [n for tree in trees for n in ast.walk(tree) if isinstance(n, ast.Lambda)]
    assert all(not (n.args.defaults or n.args.kw_defaults) for n in lambdas)
