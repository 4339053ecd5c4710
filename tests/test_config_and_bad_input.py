"""The Hydra config tree composes as documented, and bad input stops before training with a clear message."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue

import backbones
from vision_tasks.checkpoints import CheckpointError
from vision_tasks.data import DataError
from vision_tasks import runner
from vision_tasks.runner import CONFIG_DIR, check_choices


def _compose(*overrides: str, tmp_path=None):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        run_dir = [f"run_dir={tmp_path / 'run'}"] if tmp_path is not None else ["run_dir=unused"]
        return compose("train", overrides=[*run_dir, *overrides])


TINY_DATA = ["data.num_train_per_class=2", "data.num_val_per_class=1", "data.synthetic_image_size=32",
             "data.image_size=32", "data.resize_size=32", "data.num_workers=0", "model.width_mult=0.35"]


def test_default_config_is_the_synthetic_classification_run():
    cfg = _compose()
    assert cfg.task._target_ == "vision_tasks.tasks.ClassificationTask"
    assert cfg.model._target_ == "vision_tasks.models.mobilenet_v2_classifier"
    assert cfg.data._target_ == "vision_tasks.data.SyntheticClassificationDataModule"
    assert cfg.task.optimizer._target_ == "torch.optim.AdamW" and cfg.task.scheduler.max_epochs == cfg.trainer.max_epochs
    assert cfg.task.scheduler_interval == "step"
    sgd = _compose("optimizer=sgd")  # the torchvision-style recipe, by name
    assert sgd.task.optimizer._target_ == "torch.optim.SGD" and sgd.task.optimizer.nesterov is True


def test_warmup_cosine_per_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    from vision_tasks.optim import WarmupCosineLR

    scheduler = WarmupCosineLR(optimizer, max_epochs=4, warmup_epochs=1, warmup_factor=0.0, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)  # linear warm-up
    assert lrs[25] == pytest.approx(0.5) and lrs[39] < 0.01  # cosine: half-way at mid decay, ~0 at the end


def test_paper_imagenet_experiment_is_the_paper_recipe():
    cfg = _compose("experiment=paper_imagenet", "data.root=/imagenet")
    assert cfg.data._target_ == "vision_tasks.data.ImageFolderDataModule" and cfg.data.batch_size == 96
    optimizer = instantiate(cfg.task.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.RMSprop)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["alpha"], group["momentum"], group["weight_decay"]) == (0.045, 0.9, 0.9, 4e-5)
    scheduler = instantiate(cfg.task.scheduler)(optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ExponentialLR) and scheduler.gamma == 0.98
    assert cfg.ema_decay == 0.9999 and cfg.task.label_smoothing == 0.1


def test_ddp_trainer_config():
    cfg = _compose("trainer=ddp")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is True
    assert cfg.trainer.max_epochs == _compose().trainer.max_epochs  # inherits the default trainer


def test_unknown_task_and_data_name_the_choices():
    with pytest.raises(MissingConfigException, match="nope"):
        _compose("task=nope")
    with pytest.raises(SystemExit, match=r"data=coco is not available for task=classification; choose one of: .*imagenet.*synthetic"):
        check_choices(["task=classification", "data=coco"])
    check_choices(["task=classification", "data=imagenet"])  # a valid pair passes


def test_unknown_override_key_is_named():
    with pytest.raises(Exception, match="trainer.max_epoch"):
        _compose("trainer.max_epoch=3")


def test_imagenet_without_root_names_the_key():
    cfg = _compose("data=imagenet")
    with pytest.raises(MissingMandatoryValue, match="root"):
        instantiate(cfg.data)


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_data_root_stops_before_training(tmp_path, kind):
    root = tmp_path / "dataset"
    if kind == "empty":
        root.mkdir()
    cfg = _compose("data=image_folder", f"data.root={root}", tmp_path=tmp_path)
    with pytest.raises(DataError, match=str(root)):
        runner.train(cfg)
    assert not (tmp_path / "run").exists()  # nothing was written: it stopped before the run started


def test_checkpoint_of_another_task_is_refused(tmp_path, env):
    foreign = tmp_path / "detector.ckpt"
    torch.save({"state_dict": {}, "vision_tasks": {"task": "detection", "model_class": "X", "model_config": {}}}, foreign)
    with pytest.raises(CheckpointError, match="task 'detection'"):
        runner.train(_compose(f"ckpt_path={foreign}", *TINY_DATA, tmp_path=tmp_path))
    with pytest.raises(CheckpointError, match="task 'detection'"):
        runner.test(_compose(f"ckpt_path={foreign}", *TINY_DATA, tmp_path=tmp_path))


def test_plain_state_dict_as_checkpoint_points_to_weights(tmp_path, env):
    plain = tmp_path / "plain.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), plain)
    with pytest.raises(CheckpointError, match="weights=PATH"):
        runner.test(_compose(f"ckpt_path={plain}", *TINY_DATA, tmp_path=tmp_path))


def test_weights_of_another_width_or_architecture_are_refused(tmp_path, env):
    half = tmp_path / "mobilenet_v2_050.pth"
    torch.save(torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=8).state_dict(), half)
    with pytest.raises(backbones.WeightsError, match=r"(?s)another width.*shape mismatch.*backbone\.features\.0\.0\.weight"):
        runner.test(_compose(f"weights={half}", *TINY_DATA[:-1], tmp_path=tmp_path))
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    with pytest.raises(backbones.WeightsError, match="another architecture"):
        runner.train(_compose(f"weights={resnet}", *TINY_DATA, tmp_path=tmp_path))


def test_model_classes_must_match_the_dataset(tmp_path, env):
    with pytest.raises(ValueError, match="model.num_classes=5 but the dataset .* has 8 classes"):
        runner.train(_compose("model.num_classes=5", *TINY_DATA, tmp_path=tmp_path))


def test_run_directory_of_another_run_is_not_overwritten(tmp_path, env):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"someone else's run")
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        runner.train(_compose(*TINY_DATA, tmp_path=tmp_path))
    assert (checkpoints / "last.ckpt").read_bytes() == b"someone else's run"


@pytest.mark.parametrize("config, name", [("detection", "steps_per_epoch"), ("segmentation", "total_steps")])
def test_lightning_cli_schedules_get_the_run_length(config, name):
    """LightningCLI's scheduler callables hide their signature; per-batch schedules must still get the
    run's length (else a cosine given steps_per_epoch=1 ends after max_epochs batches)."""
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    from vision_tasks.tasks.base import _accepts

    cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       args=[f"--config={CONFIG_DIR / 'lightning' / f'{config}.yaml'}", "--trainer.logger=false"],
                       run=False)
    factory = cli.model.scheduler_factory
    assert _accepts(factory, name) and not _accepts(factory, "no_such_argument")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = factory(optimizer, **{name: 1000})  # the task passes the run's length
    for _ in range(300):
        optimizer.step()
        scheduler.step()
    if name == "total_steps":
        assert scheduler.total_steps == 1000  # not the config file's placeholder
    else:  # 300 of 13 x 1000 steps: past the warm-up, near the peak (with steps_per_epoch=1 it would be 0)
        assert optimizer.param_groups[0]["lr"] > 0.9
