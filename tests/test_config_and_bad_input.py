"""The Hydra config tree composes as documented, and bad input stops before training with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

import backbones
from vision_tasks.checkpoints import CheckpointError
from vision_tasks.data import DataError
from vision_tasks import runner
from vision_tasks.runner import CONFIG_DIR


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
    assert cfg.task.optimizer._target_ == "torch.optim.AdamW" and cfg.task.scheduler.warmup_epochs == 1
    assert not {"max_epochs", "total_steps", "steps_per_epoch"} & set(cfg.task.scheduler)  # the task passes the run's length
    assert cfg.task.scheduler_interval == "step"
    sgd = _compose("optimizer=sgd")  # the torchvision-style recipe, by name
    assert sgd.task.optimizer._target_ == "torch.optim.SGD" and sgd.task.optimizer.nesterov is True


def test_warmup_cosine_per_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    from vision_tasks.optim import WarmupCosineLR

    scheduler = WarmupCosineLR(optimizer, total_steps=40, warmup_epochs=1, warmup_factor=0.1, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.55) and lrs[10] == pytest.approx(1.0)  # linear warm-up
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
    assert cfg.trainer.strategy._target_ == "vision_tasks.distributed.WatchedDDPStrategy"
    assert cfg.trainer.strategy.timeout_s is None and cfg.trainer.sync_batchnorm is True
    assert cfg.trainer.max_epochs == _compose().trainer.max_epochs  # inherits the default trainer


def test_unknown_task_and_data_name_the_choices():
    """Hydra's own messages name the group and list its choices; no argv parser of ours."""
    with pytest.raises(MissingConfigException, match=r"(?s)Could not find 'task/nope'.*classification.*segmentation"):
        _compose("task=nope")
    with pytest.raises(MissingConfigException, match=r"(?s)Could not find 'data/nope'.*coco.*voc_aug"):
        _compose("data=nope")
    # a source the task has no reader for: the pair is named, and the pairs there are are listed
    with pytest.raises(MissingConfigException,
                       match=r"(?s)Could not find 'datamodule/classification_coco'.*classification_imagenet.*detection_coco"):
        _compose("task=classification", "data=coco")
    assert _compose("task=classification", "data=imagenet", "data.root=/x").data.root == "/x"  # a valid pair composes


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


def _lightning_cli(config: str):
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    return LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        args=[f"--config={CONFIG_DIR / 'lightning' / f'{config}.yaml'}", "--trainer.logger=false"],
                        run=False)


@pytest.mark.parametrize("config, names", [("detection", ("total_steps", "steps_per_epoch")),
                                           ("segmentation", ("total_steps",))])
def test_lightning_cli_schedules_get_the_run_length(config, names):
    """LightningCLI's scheduler callables hide their signature; per-batch schedules must still get the
    run's length (else a cosine given steps_per_epoch=1 ends after max_epochs batches). The config carries none."""
    from vision_tasks.tasks.base import _accepts

    factory = _lightning_cli(config).model.scheduler_factory
    assert all(_accepts(factory, name) for name in names) and not _accepts(factory, "no_such_argument")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    run = {"total_steps": 13000, "steps_per_epoch": 1000}  # the task passes the run's length
    scheduler = factory(optimizer, **{name: run[name] for name in names})
    for _ in range(300):
        optimizer.step()
        scheduler.step()
    assert scheduler.total_steps == 13000  # the run's, not a config file's
    if config == "detection":  # 300 of 13 x 1000 steps: past the warm-up (0.2 epochs), near the peak
        assert scheduler.warmup_steps == 200 and optimizer.param_groups[0]["lr"] > 0.9


def test_hydra_and_lightning_cli_give_the_same_schedule():
    """The classification schedule of both front ends (configs/train.yaml task=classification and
    configs/lightning/classification.yaml), built as the task builds it for the same run: the same learning rates."""
    from vision_tasks.tasks.base import _accepts

    hydra_config = _compose("task=classification").task.scheduler
    assert not {"max_epochs", "total_steps", "steps_per_epoch"} & set(hydra_config)
    factories = {"hydra": instantiate(hydra_config), "lightning": _lightning_cli("classification").model.scheduler_factory}
    run = {"total_steps": 5 * 40, "steps_per_epoch": 40}  # 5 epochs of 40 batches
    lrs = {}
    for front_end, factory in factories.items():
        assert _accepts(factory, "total_steps") and _accepts(factory, "steps_per_epoch")
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = factory(optimizer, **run)
        assert type(scheduler).__name__ == "WarmupCosineLR" and scheduler.warmup_steps == 40  # warmup_epochs: 1
        lrs[front_end] = []
        for _ in range(run["total_steps"]):
            lrs[front_end].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    assert lrs["hydra"] == pytest.approx(lrs["lightning"], abs=1e-12)
    assert lrs["hydra"][0] == pytest.approx(0.001) and lrs["hydra"][40] == pytest.approx(0.1)
    assert lrs["hydra"][-1] < 1e-4


def _defaults(target: str) -> dict:
    """The keyword defaults of the class or builder function ``target`` names."""
    import inspect

    from hydra.utils import get_object

    obj = get_object(target)
    return {name: p.default for name, p in inspect.signature(obj).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _same(value, other) -> bool:
    normalise = lambda v: [normalise(x) for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    return normalise(value) == normalise(other)


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_lightning_cli_files_are_the_hydra_default_runs(task):
    """configs/lightning/<task>.yaml is written by hand for LightningCLI: checked here against the Hydra
    default run of that task (task/, model/, datamodule/<task>_synthetic.yaml, optimizer/, scheduler/,
    trainer/), so that the two front ends train the same thing. Each setting the Hydra run gives that
    differs from the class's own default must be in the LightningCLI file, with the same value."""
    from omegaconf import OmegaConf

    from vision_tasks import models

    hydra_cfg = OmegaConf.to_container(_compose(f"task={task}"), resolve=True)
    cli = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "lightning" / f"{task}.yaml"))
    assert cli["trainer"]["max_epochs"] == hydra_cfg["trainer"]["max_epochs"]
    assert cli["model"]["class_path"] == hydra_cfg["task"]["_target_"]
    cli_task = cli["model"]["init_args"]
    builders = {"mobilenet_v2_classifier": "MobileNetV2Classifier", "ssdlite_mobilenet_v2": "SSDLiteMobileNetV2",
                "deeplabv3_mobilenet_v2": "DeepLabV3MobileNetV2"}
    model_class = "vision_tasks.models." + builders[hydra_cfg["model"]["_target_"].rsplit(".", 1)[1]]
    assert cli_task["model"]["class_path"] == model_class and hasattr(models, model_class.rsplit(".", 1)[1])
    # the data module's number of classes and input size come from the data in Hydra; the file writes them out
    ignore = {"model": {"num_classes", "image_size", "weights", "backbone_weights"}}
    pairs = {
        "task": (hydra_cfg["task"], {k: v for k, v in cli_task.items() if k not in ("model", "optimizer", "scheduler")},
                 hydra_cfg["task"]["_target_"]),
        "model": (hydra_cfg["model"], cli_task["model"].get("init_args", {}), model_class),
        "optimizer": (hydra_cfg["task"]["optimizer"], cli_task["optimizer"].get("init_args", {}),
                      cli_task["optimizer"]["class_path"]),
        "scheduler": (hydra_cfg["task"]["scheduler"], cli_task["scheduler"].get("init_args", {}),
                      cli_task["scheduler"]["class_path"]),
        "data": (hydra_cfg["data"], cli["data"].get("init_args", {}), cli["data"]["class_path"]),
    }
    assert cli_task["optimizer"]["class_path"] == hydra_cfg["task"]["optimizer"]["_target_"]
    assert cli_task["scheduler"]["class_path"] == hydra_cfg["task"]["scheduler"]["_target_"]
    assert cli["data"]["class_path"] == hydra_cfg["data"]["_target_"]
    for part, (hydra_part, cli_part, target) in pairs.items():
        defaults = _defaults(target)
        skip = ignore.get(part, set()) | {"_target_", "_partial_", "optimizer", "scheduler"}
        for key, value in cli_part.items():
            if key not in skip:
                assert key in hydra_part and _same(hydra_part[key], value), f"{part}.{key}: {cli_part[key]} vs Hydra"
        for key, value in hydra_part.items():
            if key in skip or value is None or (key in defaults and _same(defaults[key], value)):
                continue
            assert key in cli_part, f"{part}.{key}={value} (Hydra) is missing from configs/lightning/{task}.yaml"


def _readme_commands() -> list[tuple[str, list[str]]]:
    """``(primary config, overrides)`` of every ``python tools/{train,test,predict}.py`` command in the README's
    code blocks (backslash continuations joined, comments dropped)."""
    import re
    import shlex

    text = (CONFIG_DIR.parent / "README.md").read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    primary = {"train": "train", "test": "eval", "predict": "predict"}
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            match = re.search(r"tools/(train|test|predict)\.py(.*)", line.split("#")[0])
            if match:
                args = [a for a in shlex.split(match.group(2)) if "=" in a and not a.startswith("-")]
                commands.append((primary[match.group(1)], args))
    return commands


@pytest.mark.parametrize("primary, overrides", _readme_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_every_readme_command_composes_as_written(primary, overrides):
    """Every key a README command names exists where it says (Hydra refuses unknown keys), as written."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(primary, overrides=["run_dir=unused", *overrides] if primary != "predict" else overrides)
    for override in overrides:
        key, _, value = override.partition("=")
        if "." in key and not key.startswith(("hydra.", "+")):
            assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None or value in ("null", ""), override


def test_readme_inline_overrides_compose():
    """The ``key=value`` overrides the README names in its prose (`trainer.max_epochs=3` ...) exist for some task."""
    import re

    text = (CONFIG_DIR.parent / "README.md").read_text()
    inline = sorted(set(re.findall(r"`((?:[a-z_]+\.)*[a-z_]+=[^`\s]+)`", text)))
    assert len(inline) > 10
    tasks = ("classification", "detection", "segmentation", "multitask")
    groups = {"task", "data", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger", "experiment"}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        top_level = set(compose("train", overrides=["run_dir=unused"])) | groups
        for override in inline:
            key = override.split("=")[0]
            if "." not in key and key not in top_level:  # a Python argument (aspp=True ...), not a config key
                continue
            ok = []
            for task in tasks:
                try:
                    compose("train", overrides=["run_dir=unused", f"task={task}", override])
                    ok.append(task)
                except Exception:  # noqa: BLE001 (Hydra's errors for a missing key or group)
                    pass
            assert ok, f"the README names {override}, which no task's config takes"


def test_callbacks_and_loggers_are_config_groups(tmp_path):
    """The default run's callbacks and CSV logger come from configs/callbacks and configs/logger; logger=tensorboard
    adds TensorBoard beside the CSV file (which curves.png is drawn from); a callback is switched off by null."""
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    from vision_tasks.callbacks import RunArtifacts

    cfg = _compose("task=detection", tmp_path=tmp_path)
    callbacks = runner._instantiate_all(cfg.callbacks)
    kinds = sorted(type(c).__name__ for c in callbacks)
    assert kinds == ["DivergenceGuard", "LearningRateMonitor", "ModelCheckpoint", "ModelCheckpoint", "RunArtifacts",
                     "UnfoldBatchNorm"]  # no EMA by default
    best = next(c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor)
    assert best.monitor == "val/map" and best.dirpath == str(tmp_path / "run" / "checkpoints")
    assert _compose("task=detection", "task.monitor=val/map_50").callbacks.best_checkpoint.monitor == "val/map_50"
    with_ema = runner._instantiate_all(_compose("ema_decay=0.999", tmp_path=tmp_path).callbacks)
    assert any(type(c).__name__ == "EMAWeightAveraging" for c in with_ema)
    without = runner._instantiate_all(_compose("callbacks.lr_monitor=null", tmp_path=tmp_path).callbacks)
    assert not any(isinstance(c, LearningRateMonitor) for c in without) and any(isinstance(c, RunArtifacts) for c in without)
    (logger,) = runner._instantiate_all(cfg.logger)
    assert isinstance(logger, CSVLogger) and Path(logger.log_dir) == tmp_path / "run" / "logs"
    pytest.importorskip("tensorboard", reason="TensorBoard is an optional extra: pip install '.[tensorboard]'")
    loggers = runner._instantiate_all(_compose("logger=tensorboard", tmp_path=tmp_path).logger)
    assert sorted(type(l).__name__ for l in loggers) == ["ResumableCSVLogger", "TensorBoardLogger"]
