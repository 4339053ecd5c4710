"""What ``tools/train.py`` and ``tools/test.py`` do with a composed Hydra config.

Kept out of the scripts so tests and other programs can call :func:`train` / :func:`test` with a
config composed in-process (``configs/train.yaml``, ``configs/eval.yaml``). Everything a run builds
comes from the config: the data module (``data``), the model (``model``, with the normalisation
and padding of the weights it starts from), the LightningModule (``task``), the trainer, its
callbacks and loggers (``trainer``, ``callbacks``, ``logger``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

import backbones

from .callbacks import RunArtifacts
from .checkpoints import model_from_checkpoint, read_checkpoint_meta
from .models import describe_weights, model_from_weights, weights_settings

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

__all__ = ["CONFIG_DIR", "train", "test"]

# Model arguments that the weights a model starts from decide unless the config sets them.
_WEIGHTS_DECIDE = ("padding", "mean", "std", "normalization", "grayscale")


def _datamodule(cfg: DictConfig, stage: str) -> pl.LightningDataModule:
    """Instantiate the data module and check the data now, before any model is built or trained."""
    datamodule = instantiate(cfg.data, _convert_="all")  # plain lists: checkpoints stay weights_only-loadable
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()  # e.g. generates the synthetic set; Lightning repeats it as a no-op
    datamodule.setup(stage)
    return datamodule


def _model(cfg: DictConfig, datamodule: pl.LightningDataModule) -> nn.Module:
    """``cfg.model`` with the dataset's number of classes, and the normalisation / padding of ``weights=``."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    data_classes = getattr(datamodule, "num_classes", None)
    if "num_classes" in model_cfg:
        if model_cfg["num_classes"] is None:
            model_cfg["num_classes"] = data_classes
        elif data_classes is not None and model_cfg["num_classes"] != data_classes:
            raise ValueError(
                f"model.num_classes={model_cfg['num_classes']} but the dataset at data.root has {data_classes} "
                "classes; set model.num_classes=null to take the dataset's"
            )
    if cfg.get("weights"):  # the weights the run starts from decide what the config leaves open
        decided = weights_settings(cfg.weights, **{key: model_cfg.pop(key, None) for key in _WEIGHTS_DECIDE})
        model_cfg.update(decided)
    return instantiate(model_cfg)


def _load_initial_weights(model: nn.Module, path: str) -> None:
    """Start training from a weight file; only a classifier head of another size may differ."""
    report = backbones.load_weights(model, path, strict=False)
    problems = [k for k in report.missing + report.unexpected + report.mismatched if not k.startswith("head.")]
    if problems:
        raise backbones.WeightsError(f"weights={path} does not fit the model:\n  " + "\n  ".join(problems[:12]))
    skipped = [k.split(":")[0] for k in report.missing + report.mismatched]
    if skipped:
        log.warning("weights=%s: the head was not loaded (%s); it starts from scratch", path, ", ".join(skipped))


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """The objects of a ``name -> config`` group (callbacks, loggers); ``null`` entries and ``None`` results are skipped."""
    objects = (instantiate(node, _convert_="all") for node in (group or {}).values() if node is not None)
    return [obj for obj in objects if obj is not None]


def _trainer(cfg: DictConfig, **kwargs: Any) -> pl.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    on_cpu = trainer_cfg.get("accelerator") == "cpu" or (
        trainer_cfg.get("accelerator") == "auto" and not torch.cuda.is_available()
    )
    if trainer_cfg.get("sync_batchnorm") and on_cpu:
        log.info("trainer.sync_batchnorm: PyTorch's SyncBatchNorm runs on CUDA only; off for this CPU run")
        trainer_cfg["sync_batchnorm"] = False
    return instantiate(trainer_cfg, **kwargs)


def _save_config(cfg: DictConfig, run_dir: Path) -> None:
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def _check_run_dir(run_dir: Path, ckpt_path: str | None) -> None:
    """Never write over another run's checkpoints; resuming a run in its own directory is allowed."""
    existing = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    resuming_here = ckpt_path is not None and Path(ckpt_path).resolve().parent == (run_dir / "checkpoints").resolve()
    if existing and not resuming_here:
        raise FileExistsError(
            f"run directory {run_dir} already holds checkpoints ({', '.join(p.name for p in existing)}); choose another "
            f"hydra.run.dir, or resume that run with ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
        )


def train(cfg: DictConfig) -> Path:
    """Train the configured task; returns the run directory.

    The run directory receives ``config.yaml`` (resolved), and through the configured callbacks and
    loggers ``checkpoints/{last,best}.ckpt``, ``metrics.json`` (final validation metrics),
    ``logs/metrics.csv`` and ``curves.png``.
    """
    run_dir = Path(cfg.run_dir)
    task_cls = get_class(cfg.task._target_)
    if cfg.ckpt_path:  # refuse a wrong or foreign checkpoint now, not after setting everything up
        read_checkpoint_meta(cfg.ckpt_path, expected_task=task_cls.name)
    _check_run_dir(run_dir, cfg.ckpt_path)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = _datamodule(cfg, "fit")
    model = _model(cfg, datamodule)
    if cfg.weights:
        _load_initial_weights(model, cfg.weights)
    if cfg.get("channels_last"):
        # NHWC weights: convolutions then run (and return) channels-last tensors; on these 2-core CPUs
        # the DeepLab training step is about 20% faster, and on GPUs it is the layout AMP wants.
        model = model.to(memory_format=torch.channels_last)
    task = instantiate(cfg.task, model=model, _convert_="all")
    trainer = _trainer(cfg, callbacks=_instantiate_all(cfg.get("callbacks")),
                       logger=_instantiate_all(cfg.get("logger")) or False)
    _save_config(cfg, run_dir)
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if trainer.is_global_zero:
        print(f"run directory: {run_dir.resolve()}")
    return run_dir


def test(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``ckpt_path=`` (a training checkpoint) or ``weights=`` (a weight file) on ``data``.

    A checkpoint, a converted file or a TFLite release brings its own model (architecture,
    normalisation, padding); a plain state dict is loaded into ``cfg.model``. Writes ``metrics.json``
    (``val/...`` keys, as training does; segmentation with ``mf=true`` evaluates with the paper's
    multi-scale + flip inputs), the resolved ``config.yaml`` and the task's own results (detection:
    ``detections.json``, COCO results format with the dataset's image and category ids) into the run
    directory and returns the metrics.
    """
    run_dir = Path(cfg.run_dir)
    task_cls = get_class(cfg.task._target_)
    if bool(cfg.ckpt_path) == bool(cfg.weights):
        raise ValueError("tools/test.py needs exactly one of ckpt_path=CHECKPOINT or weights=WEIGHT_FILE")
    if cfg.ckpt_path:
        model, _ = model_from_checkpoint(cfg.ckpt_path, expected_task=task_cls.name)
    info = describe_weights(cfg.weights) if cfg.weights else None
    if info is not None and info.task not in (None, task_cls.name):
        raise ValueError(f"weights={cfg.weights} holds a {info.task} model, but task={task_cls.name} was asked for")
    datamodule = _datamodule(cfg, "validate")
    if info is not None and info.model_class is not None:  # a converted file, a TFLite release: the model it describes
        model = model_from_weights(cfg.weights, info)[0]
    elif info is not None:
        model = _model(cfg, datamodule)
        backbones.load_weights(model, cfg.weights)
    data_classes = getattr(datamodule, "num_classes", None)
    if data_classes is not None and getattr(model, "num_classes", data_classes) != data_classes:
        raise ValueError(f"the model predicts {model.num_classes} classes but the dataset has {data_classes}")
    overrides: dict[str, Any] = {}
    if cfg.get("mf"):
        if task_cls.name != "segmentation":
            raise ValueError(f"mf=true (multi-scale + flip evaluation) is for task=segmentation, not {task_cls.name}")
        from .models import MF_SCALES

        overrides = {"eval_scales": list(MF_SCALES), "eval_flip": True}
    task = instantiate(cfg.task, model=model, optimizer=None, scheduler=None, _convert_="all", **overrides)
    task.keep_results = True  # e.g. detections.json for detection
    trainer = _trainer(cfg, callbacks=[RunArtifacts(str(run_dir))], logger=False)
    _save_config(cfg, run_dir)
    results = trainer.validate(task, datamodule=datamodule)
    exported = task.export_results(run_dir)
    if trainer.is_global_zero:
        if exported is not None:
            print(f"wrote {exported}")
        print(f"run directory: {run_dir.resolve()}")
    return results[0] if results else {}
