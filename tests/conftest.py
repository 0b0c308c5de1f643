import copy
import gc
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cli_runner import child_env

# tests import their exact references from tests/reference.py
sys.path.insert(0, str(Path(__file__).parent))

from reference import dense_traces  # noqa: E402
from torch import nn  # noqa: E402

from wciaudit.checkpoints import load_checkpoint  # noqa: E402
from wciaudit.data import load_data  # noqa: E402
from wciaudit.model import AuditedModel  # noqa: E402

# CPU and GPU agree only with TF32 off; tests never rely on global seeding
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# One intra-op thread in the test process, and so in each pytest-xdist worker: `-n auto`
# runs one worker per core, and more threads would only make them contend. The models
# here are tiny, so a second thread saves little; but float sums then split the same way
# whatever else runs (with two threads, APGD's x_loss moved by more than 1e-9 between
# batch sizes 96 and 17), and threads that spin while another process holds the cores
# slowed single tests a hundredfold. Child processes keep the environment they are given.
# The command line's thread policy keeps OMP_NUM_THREADS when it is set, so commands run
# in this process stay on one thread too (on an idle machine it would choose more).
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Keep what the imports made out of the garbage collector's full passes.

    Once the test modules are imported, the process holds about half a million objects
    from torch, timm, torchattacks and scipy, which live until it ends; each full
    collection walked them all (~0.25 s), dozens of times in a run and again at every
    out-of-memory retry, which calls ``gc.collect()``. Objects made later, the tests'
    own, are collected as before.
    """
    gc.freeze()


#: session fixtures that run a scan or a dense reference (seconds each): under
#: pytest-xdist the tests that read one run in one worker, so it is computed once
SHARED_WORK = ("sample_cnn_scan", "timm_resnet_case")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``-n``), keep shared work in one worker and start long tests first.

    A test that reads a module-scoped fixture, or one of ``SHARED_WORK``, is put in an
    ``xdist_group`` with the others that read it, so that ``--dist loadgroup`` runs them
    in one worker and the fixture is built once, not once per worker; every other test
    is scheduled on its own. The ``slow`` tests are moved ahead of the rest (in their
    order), so that no long test starts when the other worker has nothing left to do.
    Runs without xdist keep the collection order. Runs before xdist's own hook, which
    reads the groups.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in items:
        group = _shared_work(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _shared_work(item: pytest.Item) -> str | None:
    """The group of the costly fixture ``item`` shares with other tests, if any."""
    names = set(getattr(item, "fixturenames", ()))  # doctests have none
    for name in SHARED_WORK:
        if name in names:
            return name
    # pytest has no public map from a test to its fixtures' definitions
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    if any(d and d[-1].scope == "module" for d in defs.values()):
        return item.nodeid.split("::", 1)[0]
    return None


ROOT = Path(__file__).resolve().parents[1]
CNN = ROOT / "sample_models" / "digits_cnn.safetensors"
CNN_ARCH = ROOT / "sample_models" / "digits_cnn.py"
# small settings for scans of the shipped CNN that check the command, not the figures
FAST = [
    "--train-samples",
    "60",
    "--test-samples",
    "60",
    "--hessian-samples",
    "30",
    "--steps",
    "2",
    "--eps",
    "0.1",
    "--masking-samples",
    "0",
    "-q",
]


@pytest.fixture(scope="session")
def digits_cnn() -> AuditedModel:
    """The shipped sample CNN, wrapped with its normalisation, in eval mode."""
    loaded = load_checkpoint(
        ROOT / "sample_models" / "digits_cnn.safetensors",
        arch=str(ROOT / "sample_models" / "digits_cnn.py"),
    )
    return AuditedModel(loaded.model, loaded.info.mean, loaded.info.std).eval()


@pytest.fixture(scope="session")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    """96 test examples, a stratified seeded subset of the shipped sample data."""
    splits = load_data("sample", test_samples=96, seed=0)
    return splits.x_test, splits.y_test


@pytest.fixture(scope="session", autouse=True)
def _private_cache_root(tmp_path_factory: pytest.TempPathFactory):
    """``wciaudit track`` keeps its cache under the user's cache folder; the tests (and the
    commands they start) keep theirs in a temporary one, never in the home folder."""
    old = os.environ.get("WCIAUDIT_CACHE_DIR")
    os.environ["WCIAUDIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("wciaudit-cache"))
    yield
    if old is None:
        os.environ.pop("WCIAUDIT_CACHE_DIR", None)
    else:
        os.environ["WCIAUDIT_CACHE_DIR"] = old


TIMM_RESNET_LAYERS = ["conv1.0.weight", "conv1.3.weight", "fc.weight"]


@pytest.fixture(scope="session")
def timm_resnet_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor, list[str], dict[str, float]]:
    """timm's ``test_resnet`` (deep stem, BatchNorm with running variances that are not 1,
    residual blocks) on 6 seeded 1x8x8 inputs, with the dense float64 traces of its first
    two stem convolutions and its head: (float32 model, x, y, layer names, exact traces).

    The stem is narrowed to 4 channels with timm's own ``stem_width``: the dense reference
    takes one double backward per weight, and 36 + 144 + 288 weights instead of
    144 + 2304 + 288 cut it six-fold; whether the exact route is exact does not depend on
    the width. Callers copy the model before changing its dtype.
    """
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3, in_chans=1, stem_width=4).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    names = list(TIMM_RESNET_LAYERS)
    exact = dense_traces(copy.deepcopy(model).double(), x.double(), y, names)
    return model, x, y, names, exact


@dataclass(frozen=True)
class SampleScan:
    """A finished ``wciaudit scan`` run as a real process: its folder, arguments and exit."""

    folder: Path
    args: list[str]
    proc: subprocess.CompletedProcess

    @property
    def json_path(self) -> Path:
        return self.folder / "digits_cnn.wciaudit.json"

    def result(self) -> dict:
        return json.loads(self.json_path.read_text())


@pytest.fixture(scope="session")
def sample_cnn_scan(tmp_path_factory: pytest.TempPathFactory) -> SampleScan:
    """One ``wciaudit scan`` of the shipped CNN on the shipped digits with ``FAST``
    settings and no ``--json`` (so the result takes its default name), run once as a
    subprocess in a folder of its own and shared by every test that only reads it.
    Tests that need other settings, or that write, run their own scan."""
    folder = tmp_path_factory.mktemp("sample_cnn_scan")
    args = ["scan", str(CNN), "--arch", str(CNN_ARCH), "--data", "sample", *FAST]
    proc = subprocess.run(
        [sys.executable, "-m", "wciaudit", *args],
        capture_output=True,
        text=True,
        cwd=folder,
        env=child_env(),
        timeout=300,
    )
    return SampleScan(folder, args, proc)
