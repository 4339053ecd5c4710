"""End to end through the real entry points: tools/train.py, tools/test.py, resume, LightningCLI, DDP on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT, TINY, run_tool

pytestmark = pytest.mark.slow


def _train(tmp_path, env, *extra: str, name: str = "run"):
    run_dir = tmp_path / name
    run_tool(["tools/train.py", "task=classification", *TINY, f"hydra.run.dir={run_dir}", *extra], env)
    return run_dir


def test_train_writes_run_directory_then_test_and_resume(tmp_path, env):
    run_dir = _train(tmp_path, env)
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "config.yaml", "metrics.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/acc1", "val/acc5", "val/loss"} <= set(metrics)
    assert 0.0 <= metrics["val/acc1"] <= metrics["val/acc5"] <= 1.0
    assert metrics["global_step"] == 2  # limit_train_batches=2, one epoch
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)  # no arbitrary unpickling
    assert checkpoint["vision_tasks"]["task"] == "classification"
    assert checkpoint["vision_tasks"]["model_config"]["width_mult"] == 0.35
    assert len(checkpoint["vision_tasks"]["class_names"]) == 8

    # tools/test.py on the checkpoint: the model is rebuilt from the checkpoint alone
    test_dir = tmp_path / "test"
    run_tool(["tools/test.py", "task=classification", *TINY[:7], f"ckpt_path={run_dir}/checkpoints/last.ckpt",
              f"hydra.run.dir={test_dir}", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false"], env)
    tested = json.loads((test_dir / "metrics.json").read_text())
    assert tested["val/acc1"] == pytest.approx(metrics["val/acc1"], abs=1e-6)  # same weights, same val split

    # tools/test.py with a plain state-dict file (the torchvision path) gives the same numbers
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    torch.save(state, tmp_path / "plain.pth")
    weights_dir = tmp_path / "test_weights"
    run_tool(["tools/test.py", "task=classification", *TINY[:8], f"weights={tmp_path}/plain.pth",
              f"hydra.run.dir={weights_dir}", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false"], env)
    assert json.loads((weights_dir / "metrics.json").read_text())["val/acc1"] == pytest.approx(tested["val/acc1"])

    # resume: continues from the stored step into its own directory
    run_tool(["tools/train.py", "task=classification", *TINY, "trainer.max_epochs=2",
              f"ckpt_path={run_dir}/checkpoints/last.ckpt", f"hydra.run.dir={run_dir}"], env)
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["global_step"] == 4 and resumed["epoch"] == 2
    # last.ckpt follows every epoch, whether or not it improved val/acc1
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4


def test_lightning_cli_fit_console_script_and_module(tmp_path, env):
    config = ROOT / "configs/lightning/classification.yaml"
    tiny = ["--data.init_args.num_train_per_class=6", "--data.init_args.num_val_per_class=3",
            "--data.init_args.synthetic_image_size=32", "--data.init_args.image_size=32",
            "--data.init_args.resize_size=32", "--data.init_args.batch_size=8", "--data.init_args.num_workers=0",
            "--model.init_args.model.init_args.width_mult=0.35", "--trainer.enable_progress_bar=false"]
    run_tool(["-m", "vision_tasks", "fit", f"--config={config}", *tiny, "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"], env, cwd=tmp_path)
    log_dir = tmp_path / "runs/lightning/classification/version_0"
    assert (log_dir / "checkpoints/last.ckpt").is_file()
    assert {"val/acc1", "val/acc5"} <= set(json.loads((log_dir / "metrics.json").read_text()))
    meta = torch.load(log_dir / "checkpoints/last.ckpt", weights_only=True)["vision_tasks"]
    assert meta["task"] == "classification" and meta["model_class"] == "MobileNetV2Classifier"

    import shutil

    script = shutil.which("vision-tasks")
    assert script, "the vision-tasks console script is not installed (pip install -e .)"
    import subprocess

    proc = subprocess.run([script, "fit", f"--config={config}", *tiny, "--trainer.fast_dev_run=1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_ddp_on_cpu_two_processes_end_with_identical_weights(tmp_path, env):
    dump = tmp_path / "weights"
    run_dir = _train(tmp_path, env, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     "+callbacks.dump._target_=rank_weights.SaveRankWeights", f"+callbacks.dump.dirpath={dump}")
    assert (dump / "world0.txt").read_text() == "2" and (dump / "world1.txt").read_text() == "2"
    start, rank0, rank1 = (torch.load(dump / f, weights_only=True) for f in ("start0.pt", "rank0.pt", "rank1.pt"))
    assert rank0.keys() == rank1.keys() and len(rank0) > 100
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(start[name], rank0[name]) for name in start), "training did not change the weights"
    assert (run_dir / "checkpoints/last.ckpt").is_file()


def test_fast_dev_run_and_ema_through_train_py(tmp_path, env):
    # fast_dev_run: one batch of each loop, no checkpoint; it must still run cleanly end to end
    proc = run_tool(["tools/train.py", "task=classification", *TINY, "trainer.fast_dev_run=true",
                     f"hydra.run.dir={tmp_path / 'dev'}"], env)
    assert "run directory:" in proc.stdout
    # EMA of the weights (Lightning's EMAWeightAveraging): the checkpoint's state_dict holds the
    # average, the raw weights are kept beside it, and both load without unpickling objects
    run_dir = _train(tmp_path, env, "ema_decay=0.5", name="ema")
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == current.keys()
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged if averaged[k].is_floating_point())
