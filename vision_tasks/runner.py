"""What ``tools/train.py`` and ``tools/test.py`` do with a composed Hydra config.

Kept out of the scripts so tests and other programs can call :func:`train` / :func:`test` with a
config composed in-process (``configs/train.yaml``, ``configs/eval.yaml``). Everything a run builds
comes from the config: the data module (``data``), the model (``model``, with the normalisation
and padding of the weights it starts from), the LightningModule (``task``), the trainer, its
callbacks and loggers (``trainer``, ``callbacks``, ``logger``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

import backbones

from .callbacks import EpochSeed, RunArtifacts
from .checkpoints import checkpoint_progress, model_from_checkpoint, read_checkpoint_meta
from .data.common import check_data_root
from .files import atomic_write, remove_stale_temporaries
from .models import MODELS, WeightsInfo, build_model, describe_weights, model_from_weights, weights_settings
from .models.transfer import load_pretrained, match_classes

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

__all__ = ["CONFIG_DIR", "RunDirectoryBusy", "train", "test"]


def _run_tag() -> str:
    """What makes a default run directory's name (``runs/<task>/train-<time>-<tag>``) unique: this process's
    id, unless a distributed launcher (torchrun, SLURM) started the process, whose ranks must share one
    directory: then its job id (or nothing)."""
    for key in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        if os.environ.get(key, "none") != "none":
            return os.environ[key]
    if any(key in os.environ for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "WORLD_SIZE")):
        return "0"
    return str(os.getpid())


# ${run_tag:} in configs/{train,eval}.yaml's hydra.run.dir; registered on import, before @hydra.main resolves it
if not OmegaConf.has_resolver("run_tag"):
    OmegaConf.register_new_resolver("run_tag", _run_tag, use_cache=True)


class RunDirectoryBusy(RuntimeError):
    """Another run holds the run directory's lock."""


# Model arguments that the weights a model starts from decide unless the config sets them.
_WEIGHTS_DECIDE = ("padding", "mean", "std", "normalization", "grayscale")


def _datamodule(cfg: DictConfig, stage: str) -> pl.LightningDataModule:
    """Instantiate the data module and check the data now, before any model is built or trained."""
    if cfg.data.get("root"):
        check_data_root(cfg.data.root)  # a missing, looping or unreadable folder, said as such
    datamodule = instantiate(cfg.data, _convert_="all")  # plain lists: checkpoints stay weights_only-loadable
    if rank_zero_only.rank == 0:
        datamodule.prepare_data()  # e.g. generates the synthetic set; Lightning repeats it as a no-op
    datamodule.setup(stage)
    return datamodule


# Model arguments that a whole-model weight file leaves to the run's config: how to train it, not what it is.
_TRAINING_KNOBS = ("freeze_bn", "dropout", "bn_momentum")


def _model(cfg: DictConfig, datamodule: pl.LightningDataModule, info: WeightsInfo | None = None) -> nn.Module:
    """``cfg.model`` with the dataset's number of classes, and the normalisation / padding of ``weights=``.

    Weights that hold a whole model of the task (a checkpoint, a converted file, a TFLite release: ``info``)
    bring their architecture: the model is the one they describe, with the dataset's classes and
    ``cfg.model``'s training settings (``freeze_bn``, ``dropout``, ``bn_momentum``).
    """
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    data_classes = getattr(datamodule, "num_classes", None)
    if info is not None and info.model_class is not None and info.model_config is not None:
        return _model_from_record(model_cfg, info, datamodule)
    if "heads" in model_cfg:  # the joint model: each head's classes from the data, which must have its labels
        _fill_head_classes(model_cfg, datamodule)
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
        if model_cfg.get("backbone_weights"):  # the whole model's weights replace any backbone weights
            log.info("weights=%s replaces model.backbone_weights=%s", cfg.weights, model_cfg["backbone_weights"])
            model_cfg["backbone_weights"] = None
    return instantiate(model_cfg)


def _fill_head_classes(model_cfg: dict[str, Any], datamodule: pl.LightningDataModule) -> None:
    """``model.heads`` of the joint model (a head set to ``false`` is left out): unknown head names and heads the
    data has no labels for are refused
    (before anything is built), a head's ``num_classes: null`` becomes the data's for that head."""
    from .models.multitask import HEADS
    from .tasks.multitask import check_head_labels

    heads = model_cfg["heads"] = {name: options for name, options in (model_cfg["heads"] or {}).items()
                                  if options is not False}  # false: not this head (a data config drops one so)
    unknown = [name for name in heads if name not in HEADS]
    if unknown:
        raise ValueError(f"model.heads: unknown head(s) {', '.join(map(repr, unknown))}; the heads are {', '.join(HEADS)}")
    check_head_labels(list(heads), datamodule)
    counts = getattr(datamodule, "head_num_classes", None) or {}
    for name, options in heads.items():
        options = heads[name] = dict(options or {})
        if name not in counts:
            continue
        if options.get("num_classes") is None:
            options["num_classes"] = counts[name]
        elif options["num_classes"] != counts[name]:
            raise ValueError(f"model.heads.{name}.num_classes={options['num_classes']} but the data gives {counts[name]} "
                             f"classes for the {name} head; set it to null to take the data's")


def _model_from_record(model_cfg: dict[str, Any], info: WeightsInfo, datamodule: pl.LightningDataModule) -> nn.Module:
    config = dict(info.model_config or {})
    accepted = inspect.signature(MODELS[info.model_class]).parameters
    config.update({key: model_cfg[key] for key in _TRAINING_KNOBS if key in model_cfg and key in accepted})
    data_classes = getattr(datamodule, "num_classes", None)
    if data_classes is not None and config.get("num_classes") != data_classes:
        config["num_classes"] = data_classes
    if "image_size" in config and getattr(datamodule, "image_size", None):  # the side it is trained (and exported) at
        config["image_size"] = int(datamodule.image_size)
    if "category_ids" in config:  # a detector's labels are the dataset's now
        ids = getattr(datamodule, "category_ids", None)
        config["category_ids"] = [int(i) for i in ids] if ids is not None and len(ids) == config["num_classes"] else None
    ignored = sorted(k for k, v in model_cfg.items() if k in config and k not in _TRAINING_KNOBS + ("num_classes",)
                     and k not in _WEIGHTS_DECIDE and v is not None and v != config[k])
    log.info("weights=%s holds a whole %s: training that model (%s)%s", info.name or info.source, info.model_class,
             ", ".join(f"{k}={config[k]}" for k in ("width_mult", "image_size", "output_stride") if k in config),
             f"; model.{', model.'.join(ignored)} of the config do not apply" if ignored else "")
    return build_model(info.model_class, config)


def _record_input_size(cfg: DictConfig, info: WeightsInfo | None, checkpoint_model: nn.Module | None = None) -> None:
    """A detector's input size, from its weight record (a TFLite release: 200 for the SSDLite one) or from
    ``checkpoint_model``, the detector of ``ckpt_path`` (the size it was trained at), sets ``data.image_size``, unless ``data.image_size=`` is
    on the command line: its anchors are for that size."""
    if checkpoint_model is not None:
        config = getattr(checkpoint_model, "config", None) or {}
        size, source = config.get("image_size"), f"ckpt_path={cfg.ckpt_path}"
    elif info is not None and info.task == "detection":
        size, source = info.input_size, f"weights={cfg.weights}"
    else:
        return
    if not size or "image_size" not in cfg.data:
        return
    # Hydra's list of overrides; a config composed in-process carries it under hydra.overrides.task with
    # return_hydra_config=True
    from hydra.core.hydra_config import HydraConfig

    given = (HydraConfig.get().overrides.task if HydraConfig.initialized()
             else OmegaConf.select(cfg, "hydra.overrides.task", default=None) or [])
    if any(str(o).lstrip("+~").split("=", 1)[0] == "data.image_size" for o in given):
        return
    if cfg.data.image_size != size:
        log.info("%s: images at its input size %d (data.image_size=N on the command line to choose another)",
                 source, size)
    cfg.data.image_size = int(size)


def _detection_label_map(model: nn.Module, model_names: list[str] | None,
                         datamodule: pl.LightningDataModule) -> list[int] | None:
    """For a detector whose labels are not the dataset's, the dataset label of each of its labels (-1 for
    those the dataset lacks): by category id where both have them, else by class name; ``None`` when the
    labels are the dataset's or nothing relates them."""
    data_classes = getattr(datamodule, "num_classes", None)
    data_names = getattr(datamodule, "class_names", None)
    if model_names is not None and len(model_names) != model.num_classes:
        model_names = None
    label_map, by = match_classes(getattr(model, "category_ids", None), model_names,
                                  getattr(datamodule, "category_ids", None), data_names)
    if label_map is None or label_map == list(range(data_classes or 0)):
        return None
    keys = getattr(model, "category_ids", None) if by == "category id" else model_names
    dropped = [str(keys[i]) for i, label in enumerate(label_map) if label < 0]
    log.info("the model's %d labels are mapped to the dataset's %d by %s; the detections of the %d the dataset "
             "lacks are dropped (%s %s)", model.num_classes, data_classes, by, len(dropped), by, ", ".join(dropped))
    return label_map


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
    """``config.yaml``, resolved. A resumed run whose config differs (a longer schedule ...) keeps the earlier
    part's as ``config.1.yaml``, ``config.2.yaml`` ...: ``config.yaml`` is the latest."""
    if rank_zero_only.rank != 0:
        return
    path, text = run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True)
    if path.is_file() and path.read_text() != text:
        n = 1
        while (run_dir / f"config.{n}.yaml").exists():
            n += 1
        atomic_write(run_dir / f"config.{n}.yaml", path.read_bytes())
    atomic_write(path, text)


# What a run leaves in its directory: a new run never writes over these, an evaluation never replaces them.
RECORDS = ("config.yaml", "metrics.json", "curves.png", "detections.json", "logs/metrics.csv", "checkpoints/*.ckpt")
LOCK_NAME = ".lock"


def _records(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for pattern in RECORDS for p in run_dir.glob(pattern))


def _is_first_process() -> bool:
    """Rank 0 of node 0: the process that owns the run directory (the others are started by it or beside it)."""
    node = os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0"))
    return rank_zero_only.rank == 0 and node in ("", "0")


@contextlib.contextmanager
def _run_directory_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` for the run, so that a second run started in the same directory stops at once.

    The lock is the operating system's (``flock`` through the ``filelock`` package): it is released when the
    process ends, however it ends, so a killed run never leaves the directory locked.
    """
    if not _is_first_process():
        yield
        return
    from filelock import FileLock, Timeout

    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirectoryBusy(
            f"run directory {run_dir} is in use by another run (its lock {run_dir / LOCK_NAME} is held); wait for "
            "that run to end, or choose another hydra.run.dir"
        ) from None
    try:
        for folder in (run_dir, run_dir / "checkpoints", run_dir / "logs"):  # what killed writers left
            for tmp in remove_stale_temporaries(folder):
                log.info("removed %s, the unfinished write of a run that was killed", tmp)
        yield
    finally:
        lock.release()
        if created and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:  # stopped before writing anything
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            run_dir.rmdir()


def _check_run_dir(run_dir: Path, ckpt_path: str | None) -> None:
    """Never write over another run's records; resuming a run in its own directory is allowed."""
    existing = _records(run_dir)
    resuming_here = ckpt_path is not None and Path(ckpt_path).resolve().parent == (run_dir / "checkpoints").resolve()
    if existing and not resuming_here:
        checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
        hint = (f", or resume that run with ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'} hydra.run.dir={run_dir}"
                if checkpoints else "")
        raise FileExistsError(
            f"run directory {run_dir} already holds {'checkpoints' if checkpoints else 'the records of a run'} "
            f"({', '.join(existing)}), which a new run would overwrite; choose another hydra.run.dir{hint}"
        )


def _evaluation_dir(run_dir: Path) -> Path:
    """``run_dir``, or when it holds a run's records, a new subfolder of it that no other evaluation has."""
    existing = _records(run_dir)
    if not existing or not _is_first_process():
        return run_dir
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for n in range(1000):
        sub = run_dir / f"test-{stamp}" if n == 0 else run_dir / f"test-{stamp}-{n}"
        try:
            sub.mkdir(parents=True)  # exclusive: two evaluations started at once get two folders
        except FileExistsError:
            continue
        log.warning("%s already holds a run's records (%s), which an evaluation does not replace: this one writes "
                    "into %s", run_dir, ", ".join(existing), sub)
        return sub
    raise FileExistsError(f"no free test-{stamp}-N subfolder in {run_dir}")


def _finished(cfg: DictConfig, ckpt_path: str) -> str | None:
    """Why resuming ``ckpt_path`` with this config would train nothing (the run it continues is finished), or None."""
    epochs, step = checkpoint_progress(ckpt_path)
    max_epochs, max_steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps", -1)
    if max_steps is not None and max_steps != -1 and step >= max_steps:
        return f"it reached global step {step} of trainer.max_steps={max_steps}"
    if max_epochs is not None and max_epochs != -1 and epochs >= max_epochs:
        return f"it completed {epochs} of trainer.max_epochs={max_epochs} epochs, global step {step}"
    return None


def train(cfg: DictConfig) -> Path:
    """Train the configured task; returns the run directory.

    The run directory receives ``config.yaml`` (resolved), and through the configured callbacks and
    loggers ``checkpoints/{last,best}.ckpt``, ``metrics.json`` (final validation metrics),
    ``logs/metrics.csv`` and ``curves.png``. A new run refuses a directory that holds another run's records;
    a run resumed in its own directory continues them. The run holds ``RUN_DIR/.lock``: a second run in the
    same directory stops at once (:class:`RunDirectoryBusy`). Resuming a finished run says so and changes nothing.
    """
    run_dir = Path(cfg.run_dir)
    task_cls = get_class(cfg.task._target_)
    if cfg.ckpt_path:  # refuse a wrong or foreign checkpoint now, not after setting everything up
        read_checkpoint_meta(cfg.ckpt_path, expected_task=task_cls.name)
        finished = _finished(cfg, cfg.ckpt_path)
        if finished:
            print(f"nothing to do: ckpt_path={cfg.ckpt_path} is of a finished run: {finished}. Nothing was trained "
                  f"or written. To train it further, resume with a larger trainer.max_epochs (or trainer.max_steps).")
            return run_dir
    with _run_directory_lock(run_dir):
        if _is_first_process():  # the processes a DDP run starts find its config.yaml: theirs
            _check_run_dir(run_dir, cfg.ckpt_path)
        _train(cfg, run_dir, task_cls)
    if rank_zero_only.rank == 0:
        print(f"run directory: {run_dir.resolve()}")
    return run_dir


def _train(cfg: DictConfig, run_dir: Path, task_cls: type) -> None:
    info = describe_weights(cfg.weights) if cfg.weights else None
    if info is not None and info.task not in (None, task_cls.name):
        hint = (f"; to start the backbone from it, use model.backbone_weights={cfg.weights}"
                if info.task == "classification" else "")
        raise ValueError(f"weights={cfg.weights} holds a {info.task} model, but task={task_cls.name} was asked for{hint}")
    _record_input_size(cfg, info)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = _datamodule(cfg, "fit")
    model = _model(cfg, datamodule, info)
    transfer = None
    if cfg.weights:
        transfer = load_pretrained(model, cfg.weights, getattr(datamodule, "class_names", None),
                                   getattr(datamodule, "category_ids", None), cfg.get("weights_head", "auto"))
    if cfg.get("channels_last"):
        # NHWC weights: convolutions then run (and return) channels-last tensors; on these 2-core CPUs
        # the DeepLab training step is about 20% faster, and on GPUs it is the layout AMP wants.
        model = model.to(memory_format=torch.channels_last)
    task = instantiate(cfg.task, model=model, _convert_="all")
    trainer = _trainer(cfg, callbacks=[*_instantiate_all(cfg.get("callbacks")), EpochSeed(cfg.seed)],
                       logger=_instantiate_all(cfg.get("logger")) or False)
    _save_config(cfg, run_dir)
    if (cfg.get("validate_start", True) and info is not None and transfer is not None and not transfer.fresh
            and not cfg.ckpt_path):
        start = _validate_start(trainer, task, datamodule)
    else:
        start = None
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    best = _best_checkpoint(trainer, task)
    if start is not None and best is not None and best.best_model_score is not None \
            and float(best.best_model_score) == start:
        log.warning("no epoch beat the weights the run started from (%s %.4f): %s holds them", task.monitor, start,
                    best.best_model_path)


def _best_checkpoint(trainer: pl.Trainer, task: pl.LightningModule) -> ModelCheckpoint | None:
    """The callback that keeps ``best.ckpt``: a ModelCheckpoint monitoring the task's metric, keeping one file."""
    return next((cb for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, ModelCheckpoint) and cb.monitor == task.monitor and cb.save_top_k == 1), None)


def _validate_start(trainer: pl.Trainer, task: pl.LightningModule, datamodule: pl.LightningDataModule) -> float | None:
    """Fine-tuning whole-model weights whose class layers all loaded: validate them before training and make them
    the best checkpoint to beat (``validate_start``).

    A published model fine-tuned on a few hundred images can only lose on data like its own (the SSDLite COCO
    release on coco128: val/map 0.196 before, 0.191-0.195 after each epoch); with the start as the first
    candidate, ``best.ckpt`` is never worse than it. Lightning saves no checkpoint outside ``fit``, so the
    start's is written here (weights and the task's metadata, through the run's checkpoint IO) and the
    ModelCheckpoint is told its score. A one-process run only (DDP would validate on every rank) and not
    with ``fast_dev_run``. Returns the start's score, or None when it was not validated.
    """
    best = _best_checkpoint(trainer, task)
    if best is None or trainer.world_size > 1 or trainer.fast_dev_run or best.dirpath is None:
        return None
    checker = pl.Trainer(accelerator=trainer.accelerator, devices=1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=trainer.progress_bar_callback is not None,
                         plugins=[trainer.strategy.checkpoint_io], precision=trainer.precision,
                         limit_val_batches=trainer.limit_val_batches)
    metrics = checker.validate(task, datamodule=datamodule, verbose=False)[0]
    score = metrics.get(task.monitor)
    if score is None or not math.isfinite(float(score)):
        log.warning("validate_start: the starting weights gave no finite %s; best.ckpt will come from training",
                    task.monitor)
        return None
    path = str(Path(best.dirpath) / f"{best.filename or 'best'}{best.FILE_EXTENSION}")
    checker.save_checkpoint(path, weights_only=True)
    value = torch.tensor(float(score))
    best.best_k_models = {path: value}
    best.kth_best_model_path = best.best_model_path = path
    best.kth_value = best.best_model_score = value
    log.info("the weights the run starts from: %s %.4f; %s holds them until an epoch beats them", task.monitor,
             float(score), path)
    return float(score)


def test(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``ckpt_path=`` (a training checkpoint) or ``weights=`` (a weight file) on ``data``.

    A checkpoint, a converted file or a TFLite release brings its own model (architecture,
    normalisation, padding); a plain state dict is loaded into ``cfg.model``. Writes ``metrics.json``
    (``val/...`` keys, as training does; segmentation with ``mf=true`` evaluates with the paper's
    multi-scale + flip inputs), the resolved ``config.yaml`` and the task's own results (detection:
    ``detections.json``, COCO results format with the dataset's image and category ids) into the run
    directory and returns the metrics. A run directory that already holds a run's records (a training run's,
    or an earlier evaluation's) is left as it is: the evaluation then writes into a new subfolder
    ``RUN_DIR/test-<time>-<n>`` and says so.

    Detection with a checkpoint, or a weight file whose record gives its input size (a TFLite release: 200 for
    the SSDLite one), evaluates at the size the detector was trained at (``data.image_size``) unless
    ``data.image_size=`` is on the command line.
    A detector whose labels are not the dataset's is evaluated when its record or checkpoint relates them:
    by the model's ``category_ids`` (the COCO ids of the TF OD API's 90 outputs) against the dataset's, or
    else by class names; its detections then take the dataset's labels and those of classes the dataset
    lacks are dropped (``DetectionTask(label_map=...)``). Without such a relation a model with another
    number of classes than the dataset is refused.
    """
    run_dir = Path(cfg.run_dir)
    task_cls = get_class(cfg.task._target_)
    if bool(cfg.ckpt_path) == bool(cfg.weights):
        raise ValueError("tools/test.py needs exactly one of ckpt_path=CHECKPOINT or weights=WEIGHT_FILE")
    model_names: list[str] | None = None
    if cfg.ckpt_path:
        model, meta = model_from_checkpoint(cfg.ckpt_path, expected_task=task_cls.name)
        model_names = meta.get("class_names")
    info = describe_weights(cfg.weights) if cfg.weights else None
    if info is not None and info.task not in (None, task_cls.name):
        raise ValueError(f"weights={cfg.weights} holds a {info.task} model, but task={task_cls.name} was asked for")
    _record_input_size(cfg, info, model if cfg.ckpt_path and task_cls.name == "detection" else None)
    datamodule = _datamodule(cfg, "validate")
    if info is not None and info.model_class is not None:  # a converted file, a TFLite release: the model it describes
        model = model_from_weights(cfg.weights, info)[0]
        model_names = info.class_names
    elif info is not None:
        model = _model(cfg, datamodule)
        backbones.load_weights(model, info.source)
    overrides: dict[str, Any] = {}
    data_classes = getattr(datamodule, "num_classes", None)
    label_map = _detection_label_map(model, model_names, datamodule) if task_cls.name == "detection" else None
    if label_map is not None:
        overrides["label_map"] = label_map
    elif data_classes is not None and getattr(model, "num_classes", data_classes) != data_classes:
        raise ValueError(f"the model predicts {model.num_classes} classes but the dataset has {data_classes}, and "
                         "nothing relates the two (no category ids or class names of the model's labels)")
    if cfg.get("mf"):
        if task_cls.name != "segmentation":
            raise ValueError(f"mf=true (multi-scale + flip evaluation) is for task=segmentation, not {task_cls.name}")
        from .models import MF_SCALES

        overrides.update(eval_scales=list(MF_SCALES), eval_flip=True)
    task = instantiate(cfg.task, model=model, optimizer=None, scheduler=None, _convert_="all", **overrides)
    task.keep_results = True  # e.g. detections.json for detection
    run_dir = _evaluation_dir(run_dir)
    trainer = _trainer(cfg, callbacks=[RunArtifacts(str(run_dir))], logger=False)
    _save_config(cfg, run_dir)
    results = trainer.validate(task, datamodule=datamodule)
    exported = task.export_results(run_dir)
    if trainer.is_global_zero:
        if exported is not None:
            print(f"wrote {exported}")
        print(f"run directory: {run_dir.resolve()}")
    return results[0] if results else {}
