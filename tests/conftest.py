"""Shared fixtures: a tiny synthetic dataset and a helper to run the tools in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent

# The network alone, as the reference implementations run it: the models normalise their input themselves
# (vision_tasks.models.ImagePreprocessing); mean 0 and std 1 make that the identity, so that their logits can
# be compared with torchvision's or timm's on the same (already normalised) tensors.
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

# A synthetic set and model small enough for end-to-end runs in seconds on 2 CPU cores.
TINY = [
    "data.num_train_per_class=6",
    "data.num_val_per_class=3",
    "data.synthetic_image_size=32",
    "data.image_size=32",
    "data.resize_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "model.width_mult=0.35",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A session-wide VISION_TASKS_DATA, so the synthetic sets are generated once."""
    return tmp_path_factory.mktemp("vision_tasks_data")


@pytest.fixture()
def env(data_dir, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("VISION_TASKS_DATA", str(data_dir))
    # the checkout under test first: an installed vision_tasks (e.g. an editable install of another worktree) must
    # not stand in for it in the subprocesses
    environ = dict(os.environ, VISION_TASKS_DATA=str(data_dir), PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    environ.pop("CUDA_VISIBLE_DEVICES", None)
    return environ


def run_tool(args: list[str], env: dict[str, str], cwd: Path = ROOT, expect_ok: bool = True, timeout: int = 600):
    """Run ``python <args>`` and return the CompletedProcess; fail with its output when the exit code is unexpected."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if (proc.returncode == 0) != expect_ok:
        pytest.fail(f"`python {' '.join(args)}` exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: small models run faster on a shared 2-core machine, without OpenMP spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters (so parity tests mean something)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state, to check that a refused load changed nothing."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"refused load still changed {changed[:5]}"


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def refuse(model: nn.Module, path, **kwargs) -> str:
    """``backbones.load_weights(model, path)`` must raise WeightsError and leave the model unchanged; the message."""
    from backbones import WeightsError, load_weights

    before = snapshot(model)
    with pytest.raises(WeightsError) as err:
        load_weights(model, path, **kwargs)
    assert_unchanged(model, before)
    return str(err.value)
