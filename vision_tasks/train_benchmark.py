"""Training-step throughput of the three tasks: through Lightning, in a bare PyTorch loop, and of the data pipeline
(``python tools/benchmark.py train``, issue 13).

For each task the default synthetic configuration (``python tools/train.py task=<task>``: configs/ composed with
Hydra's compose API, so the model, batch size, optimizer, schedule and input size are the project's defaults) is
built once, and three figures are measured in one process, with the same thread count:

``lightning``
    our LightningModule (``cfg.task``) in a real ``pytorch_lightning.Trainer`` built from ``cfg.trainer`` (CPU, no
    logger, no checkpointing, no progress bar, no validation), fed pre-made batches from memory (a DataLoader over a
    list of the same fixed tensors), so data loading is left out;
``bare``
    a plain PyTorch loop over a copy of the same model taken before training (the same initial weights), the same
    batches, the same optimizer class, learning rate and parameter groups (:func:`vision_tasks.optim.param_groups`)
    and schedule, and the task's own loss (:func:`bare_loss`): forward, backward, ``optimizer.step``, ``zero_grad``,
    scheduler step, and nothing else;
``data``
    iterating the task's real train dataloader (the datamodule of the config, with its ``num_workers``), against
    what the training step consumes.

The two training paths run interleaved: Lightning trains one ``fit`` of ``warmup + steps + 1`` steps and a callback
runs the bare loop between its chunks (``warmup`` bare steps after Lightning's warm-up, then ``chunk`` bare steps
after every ``chunk`` Lightning steps), so machine noise hits both alike. A Lightning chunk's time is the time
between the starts of its first step and of the next chunk's first step, less the bare steps run in between; it
holds everything Lightning does per step (batch fetch and transfer, hooks, ``self.log``, the metric updates of
``training_step``, the optimizer closure, the scheduler). The figure of each path is the median images/s of its
chunks.
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from .stats import count_params

__all__ = ["TASKS", "SMALL", "Setup", "build", "bare_loss", "bare_optimizer", "bare_step", "lightning_trainer",
           "measure_task", "one_step_parity"]

TASKS = ("classification", "detection", "segmentation")

# --small: a tiny width, input and batch, so that a test runs in seconds
SMALL: dict[str, list[str]] = {
    "classification": ["data.num_train_per_class=4", "data.num_val_per_class=1", "data.synthetic_image_size=32",
                       "data.image_size=32", "data.resize_size=32", "data.batch_size=4"],
    "detection": ["data.num_train=12", "data.num_val=2", "data.synthetic_image_size=64", "data.image_size=64",
                  "data.batch_size=4"],
    "segmentation": ["data.num_train=12", "data.num_val=2", "data.synthetic_image_size=64", "data.crop_size=64",
                     "data.batch_size=4"],
}
SMALL_COMMON = ["model.width_mult=0.35", "data.num_workers=0"]


def compose_config(task: str, overrides: Sequence[str] = (), run_dir: str | None = None) -> DictConfig:
    """``configs/train.yaml`` with ``task=<task>`` and ``overrides``, as ``tools/train.py`` composes it."""
    from hydra import compose, initialize_config_dir

    from .runner import CONFIG_DIR

    run_dir = run_dir or tempfile.mkdtemp(prefix="train_benchmark_")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={run_dir}", f"task={task}", *overrides])


@dataclass
class Setup:
    """One task as ``tools/train.py`` builds it: config, data module, LightningModule and an untouched copy of its
    model (the same initial weights) for the bare loop."""

    name: str
    cfg: DictConfig
    datamodule: pl.LightningDataModule
    task: pl.LightningModule
    bare_model: nn.Module
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.cfg.data.batch_size)


def build(name: str, overrides: Sequence[str] = (), small: bool = False) -> Setup:
    """The data module, model and task of ``python tools/train.py task=<name> [overrides]`` (the runner's own
    builders: the dataset's classes, ``channels_last``); the bare loop's model is a deep copy taken before training."""
    from .runner import _datamodule, _model

    overrides = [*(SMALL[name] + SMALL_COMMON if small else []), *overrides]
    cfg = compose_config(name, overrides)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = _datamodule(cfg, "fit")
    model = _model(cfg, datamodule)
    if cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    bare_model = copy.deepcopy(model)
    task = instantiate(cfg.task, model=model, _convert_="all")
    return Setup(name, cfg, datamodule, task, bare_model)


# ---------------------------------------------------------------- batches
def _identity(batch: Any) -> Any:
    return batch


def _images_in(batch: Any) -> int:
    images = batch[0]
    return int(images.shape[0]) if isinstance(images, torch.Tensor) else len(images)


def take_batches(setup: Setup, count: int) -> list[Any]:
    """The first ``count`` full batches of the task's train dataloader (kept in memory)."""
    batches: list[Any] = []
    while len(batches) < count:
        before = len(batches)
        for batch in setup.datamodule.train_dataloader():
            if _images_in(batch) == setup.batch_size:
                batches.append(batch)
            if len(batches) == count:
                break
        if len(batches) == before:
            raise ValueError(f"{setup.name}: the train dataloader gives no full batch of {setup.batch_size}")
    return batches


def memory_loader(batches: Sequence[Any]) -> DataLoader:
    """A DataLoader whose items are the pre-made ``batches`` themselves (no collation, no workers)."""
    return DataLoader(list(batches), batch_size=None, shuffle=False, num_workers=0, collate_fn=_identity)


# ---------------------------------------------------------------- the bare loop
def bare_loss(task: pl.LightningModule, model: nn.Module, batch: Any) -> torch.Tensor:
    """The training loss of ``task.training_step`` computed on ``model``, without Lightning (no logging, no metrics)."""
    from .tasks import ClassificationTask, DetectionTask, SegmentationTask
    from .tasks.detection import detection_losses

    images, labels = batch
    if isinstance(task, ClassificationTask):
        return torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=task.label_smoothing)
    if isinstance(task, DetectionTask):
        return detection_losses(model.loss(model.forward_head(images), labels), task.localization_weight)["loss"]
    if isinstance(task, SegmentationTask):
        if task.aux_weight > 0:
            logits, aux_logits = model.forward_with_aux(images)
            return task.cross_entropy(logits, labels) + task.aux_weight * task.cross_entropy(aux_logits, labels)
        return task.cross_entropy(model(images), labels)
    raise TypeError(f"no bare loss for {type(task).__name__}")


def bare_optimizer(task: pl.LightningModule, model: nn.Module, total_steps: int, steps_per_epoch: int):
    """The optimizer and scheduler that ``task.configure_optimizers`` builds, over ``model``'s parameters: the same
    factory, parameter groups and learning-rate multipliers; the scheduler with the given run length."""
    from .optim import apply_lr_mult, param_groups
    from .tasks.base import _accepts

    optimizer = apply_lr_mult(task.optimizer_factory(param_groups(model, task.norm_weight_decay, task.backbone_lr_mult)))
    scheduler = None
    if task.scheduler_factory is not None:
        length = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch}
        wanted = {k: v for k, v in length.items() if _accepts(task.scheduler_factory, k)}
        scheduler = task.scheduler_factory(optimizer, **wanted)
    return optimizer, scheduler


def bare_step(task: pl.LightningModule, model: nn.Module, optimizer, scheduler, batch: Any) -> None:
    """One training step of the bare loop: forward + loss, backward, ``optimizer.step``, ``zero_grad``, and the
    scheduler when it is stepped per batch."""
    loss = bare_loss(task, model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None and task.scheduler_interval == "step":
        scheduler.step()


# ---------------------------------------------------------------- Lightning
def lightning_trainer(setup: Setup, steps: int, callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    """``cfg.trainer`` (as ``tools/train.py`` builds it) for ``steps`` CPU training steps of one epoch: no logger,
    no checkpointing, no progress bar, no model summary, no validation."""
    from .runner import _trainer

    _quiet_lightning()
    return _trainer(setup.cfg, accelerator="cpu", devices=1, num_nodes=1, strategy="auto", logger=False,
                    callbacks=list(callbacks), enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, max_epochs=1, max_steps=steps, limit_train_batches=steps,
                    limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(setup.cfg.run_dir))


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*val_dataloader.*")
    warnings.filterwarnings("ignore", message=".*You defined a `validation_step` but have no `val_dataloader`.*")


class _Interleaved(pl.Callback):
    """Times Lightning's steps and runs the bare loop's chunks between them (see the module's docstring). Every time
    is a pair: wall-clock seconds and the process's CPU seconds (all its threads)."""

    def __init__(self, run_bare: Callable[[int], None], warmup: int, chunk: int, chunks: int) -> None:
        self.run_bare, self.warmup, self.chunk, self.chunks = run_bare, warmup, chunk, chunks
        self.starts: list[tuple[float, float]] = []    # the clocks at the start of each Lightning step
        self.excluded: list[tuple[float, float]] = []  # bare seconds run before that start
        self.bare_total = (0.0, 0.0)
        self.bare_times: list[tuple[float, float]] = []

    @staticmethod
    def _now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(self._now())
        self.excluded.append(self.bare_total)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = batch_idx + 1
        if done == self.warmup and self.warmup > 0:
            self._bare(self.warmup, record=False)
        elif done > self.warmup and (done - self.warmup) % self.chunk == 0 and len(self.bare_times) < self.chunks:
            self._bare(self.chunk, record=True)

    def _bare(self, steps: int, record: bool) -> None:
        start = self._now()
        self.run_bare(steps)
        end = self._now()
        elapsed = (end[0] - start[0], end[1] - start[1])
        self.bare_total = (self.bare_total[0] + elapsed[0], self.bare_total[1] + elapsed[1])
        if record:
            self.bare_times.append(elapsed)

    def lightning_times(self) -> list[tuple[float, float]]:
        times = []
        for j in range(self.chunks):
            a, b = self.warmup + j * self.chunk, self.warmup + (j + 1) * self.chunk
            times.append(tuple(self.starts[b][k] - self.starts[a][k] - (self.excluded[b][k] - self.excluded[a][k])
                               for k in (0, 1)))
        return times


def measure_task(name: str, steps: int = 30, warmup: int = 3, chunk: int = 1, distinct: int = 8,
                 data_batches: int | None = None, small: bool = False, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Images/s of the Lightning step, the bare step (interleaved) and the data pipeline for task ``name``; returns
    ``{"task", "setting", "rows": [lightning, bare, data], "lightning_vs_bare", "data_vs_lightning"}``."""
    setup = build(name, overrides, small=small)
    chunk = max(1, min(chunk, steps))
    chunks = max(1, steps // chunk)
    total = warmup + chunks * chunk + 1  # +1: the start of the step after the last chunk closes it

    data = measure_data(setup, data_batches or max(steps, 4), warmup=min(2, warmup) if small else max(2, warmup))
    batches = take_batches(setup, min(distinct, total))
    sequence = [batches[i % len(batches)] for i in range(total)]

    optimizer, scheduler = bare_optimizer(setup.task, setup.bare_model, total_steps=total, steps_per_epoch=total)
    setup.bare_model.train()
    position = [0]

    def run_bare(n: int) -> None:
        for _ in range(n):
            bare_step(setup.task, setup.bare_model, optimizer, scheduler, sequence[position[0] % total])
            position[0] += 1

    timer = _Interleaved(run_bare, warmup, chunk, chunks)
    trainer = lightning_trainer(setup, total, callbacks=[timer])
    trainer.fit(setup.task, train_dataloaders=memory_loader(sequence))
    if len(timer.starts) != total or len(timer.bare_times) != chunks:
        raise RuntimeError(f"{name}: Lightning ran {len(timer.starts)} of {total} steps, the bare loop "
                           f"{len(timer.bare_times)} of {chunks} chunks")

    images = chunk * setup.batch_size
    light_times, bare_times = timer.lightning_times(), timer.bare_times
    light = [images / wall for wall, _ in light_times]
    bare = [images / wall for wall, _ in bare_times]
    light_ips, bare_ips = statistics.median(light), statistics.median(bare)
    ratio = light_ips / bare_ips
    # the same on the process's CPU seconds, which a core lent to another program does not inflate as it does the
    # wall clock (OpenMP's spin-waits still count), and the median of the ratios of neighbouring chunks
    light_cpu = statistics.median(images / max(cpu, 1e-9) for _, cpu in light_times)
    bare_cpu = statistics.median(images / max(cpu, 1e-9) for _, cpu in bare_times)
    paired = statistics.median(b[0] / l[0] for l, b in zip(light_times, bare_times))
    data["vs_lightning"] = data["images_per_s"] / light_ips
    setting = _setting(setup)
    rows = [
        {"task": name, "path": "lightning", "images_per_s": light_ips, "chunk_images_per_s": light, "vs_bare": ratio,
         "images_per_cpu_s": light_cpu},
        {"task": name, "path": "bare", "images_per_s": bare_ips, "chunk_images_per_s": bare, "vs_bare": 1.0,
         "images_per_cpu_s": bare_cpu},
        {"task": name, "path": "data", **data},
    ]
    for row in rows:
        row.update(batch_size=setup.batch_size, steps=chunks * chunk, warmup=warmup, chunk=chunk)
    return {"task": name, "setting": setting, "rows": rows, "lightning_vs_bare": ratio,
            "lightning_vs_bare_paired": paired, "lightning_vs_bare_cpu": light_cpu / bare_cpu,
            "data_vs_lightning": data["vs_lightning"]}


def measure_data(setup: Setup, batches: int, warmup: int = 2) -> dict[str, Any]:
    """Images/s of iterating the task's real train dataloader for ``batches`` batches after ``warmup`` (worker
    start-up left out); a new epoch's iterator is started when one ends."""
    loader = setup.datamodule.train_dataloader()
    iterator = iter(loader)

    def following() -> Any:
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:
            iterator = iter(loader)
            return next(iterator)

    for _ in range(warmup):
        following()
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        count += _images_in(following())
    elapsed = time.perf_counter() - start
    del iterator
    return {"images_per_s": count / elapsed, "batches": batches, "num_workers": int(loader.num_workers)}


def _setting(setup: Setup) -> dict[str, Any]:
    cfg, data = setup.cfg, setup.cfg.data
    side = data.get("image_size") or data.get("crop_size")
    optimizer = cfg.task.optimizer
    return {
        "model": str(cfg.model._target_).rsplit(".", 1)[-1], "width_mult": float(cfg.model.get("width_mult", 1.0)),
        "input": f"{side}x{side}", "batch_size": int(data.batch_size), "num_workers": int(data.num_workers),
        "optimizer": str(optimizer._target_).rsplit(".", 1)[-1], "lr": float(optimizer.lr),
        "scheduler": str(cfg.task.scheduler._target_).rsplit(".", 1)[-1] if cfg.task.get("scheduler") else None,
        "channels_last": bool(cfg.get("channels_last")),
        "parameters": count_params(setup.bare_model),
    }


# ---------------------------------------------------------------- parity of the two paths
def one_step_parity(name: str, overrides: Sequence[str] = (), small: bool = True, seed: int = 0) -> dict[str, Any]:
    """One training step from the same initial weights on the same batch, through Lightning and through the bare
    loop (dropout drawn from the same seed in both): the largest parameter and buffer differences afterwards, and
    how far the step moved the parameters (so that a step that changed nothing is not mistaken for agreement)."""
    setup = build(name, overrides, small=small)
    batch = take_batches(setup, 1)[0]
    before = {k: v.detach().clone() for k, v in setup.bare_model.state_dict().items()}

    class _Seed(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            torch.manual_seed(seed)

    trainer = lightning_trainer(setup, 1, callbacks=[_Seed()])
    trainer.fit(setup.task, train_dataloaders=memory_loader([batch]))

    optimizer, scheduler = bare_optimizer(setup.task, setup.bare_model, total_steps=1, steps_per_epoch=1)
    setup.bare_model.train()
    lr = float(optimizer.param_groups[0]["lr"])  # the step's (the scheduler moves it on afterwards)
    torch.manual_seed(seed)
    bare_step(setup.task, setup.bare_model, optimizer, scheduler, batch)

    light_state, bare_state = setup.task.model.state_dict(), setup.bare_model.state_dict()
    param_names = {k for k, _ in setup.bare_model.named_parameters()}
    diff = {k: float((light_state[k].float() - bare_state[k].float()).abs().max()) if light_state[k].numel() else 0.0
            for k in bare_state}
    moved = max(float((bare_state[k].float() - before[k].float()).abs().max()) for k in param_names)
    return {"max_param_diff": max(diff[k] for k in param_names),
            "max_buffer_diff": max((diff[k] for k in diff if k not in param_names), default=0.0),
            "moved": moved, "lr": lr, "parameters": len(param_names)}


# ---------------------------------------------------------------- report
def report(results: list[dict[str, Any]], out: Path, threads: int, device: str, settings: dict[str, Any]) -> dict:
    """Print the table, write ``out/train.json`` and ``out/train.png``; returns the record."""
    import json

    print(f"training images/s, {threads} threads, {device}; median of chunks of {settings['chunk']} steps "
          f"({settings['steps']} timed steps a path after {settings['warmup']} warm-up), Lightning and bare interleaved")
    header = (f"{'task':<15} {'model':<28} {'input':>7} {'batch':>5} {'Lightning':>10} {'bare':>10} {'L/bare':>7} "
              f"{'paired':>7} {'CPU-s':>7} {'data':>10} {'workers':>7} {'data/L':>7}")
    print(header)
    print("  (images/s; L/bare: ratio of the medians; paired: median of the ratios of neighbouring chunks; CPU-s: ratio of"
          " images per process CPU-second; data/L: the train dataloader alone against the Lightning step)")
    for result in results:
        light, bare, data = result["rows"]
        s = result["setting"]
        print(f"{result['task']:<15} {s['model'] + ' ' + format(s['width_mult'], 'g'):<28} {s['input']:>7} "
              f"{s['batch_size']:>5} {light['images_per_s']:>10.1f} {bare['images_per_s']:>10.1f} "
              f"{result['lightning_vs_bare']:>7.3f} {result['lightning_vs_bare_paired']:>7.3f} "
              f"{result['lightning_vs_bare_cpu']:>7.3f} {data['images_per_s']:>10.1f} {data['num_workers']:>7} "
              f"{result['data_vs_lightning']:>7.2f}")
    out.mkdir(parents=True, exist_ok=True)
    record = {"threads": threads, "device": device, **settings, "target_lightning_vs_bare": 0.95,
              "tasks": results, "rows": [row for result in results for row in result["rows"]]}
    (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(results, out / "train.png", f"training step throughput ({threads} threads, {device})")
    print(f"written: {out / 'train.json'}, {out / 'train.png'}")
    return record


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["task"] for r in results]
    x = list(range(len(names)))
    light = [r["rows"][0]["images_per_s"] for r in results]
    bare = [r["rows"][1]["images_per_s"] for r in results]
    data = [r["rows"][2]["images_per_s"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    w = 0.38
    left.bar([i - w / 2 for i in x], light, w, label="Lightning Trainer", color="tab:blue")
    left.bar([i + w / 2 for i in x], bare, w, label="bare PyTorch loop", color="tab:gray")
    for i, r in enumerate(results):
        left.annotate(f"{r['lightning_vs_bare']:.2f}x", (i, max(light[i], bare[i])), ha="center", va="bottom",
                      xytext=(0, 3), textcoords="offset points")
    left.set_xticks(x, names)
    left.set(ylabel="training images/s (median)", title="training step: Lightning / bare")
    left.set_ylim(0, max(light + bare) * 1.35)
    left.legend(loc="upper center", ncol=2, fontsize=8)
    right.bar([i - w / 2 for i in x], light, w, label="training step (Lightning)", color="tab:blue")
    right.bar([i + w / 2 for i in x], data, w, label="train dataloader alone", color="tab:green")
    for i, r in enumerate(results):
        right.annotate(f"{r['data_vs_lightning']:.1f}x", (i + w / 2, data[i]), ha="center", va="bottom",
                       xytext=(0, 3), textcoords="offset points")
    right.set_yscale("log")
    right.set_ylim(min(light + data) / 2, max(light + data) * 12)
    right.set_xticks(x, names)
    right.set(ylabel="images/s (log)", title="data pipeline / training step")
    right.legend(loc="upper center", ncol=2, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(tasks: Sequence[str], steps: int, warmup: int, chunk: int, out: Path, threads: int | None = None,
        small: bool = False, overrides: Sequence[str] = ()) -> dict:
    """``tools/benchmark.py train``: measure each task, print, write ``train.json`` and ``train.png``."""
    from .benchmark import device_name

    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    device = device_name("cpu")
    results = []
    for name in tasks:
        start = time.perf_counter()
        results.append(measure_task(name, steps=steps, warmup=warmup, chunk=chunk, small=small, overrides=overrides))
        print(f"{name}: measured in {time.perf_counter() - start:.0f} s", flush=True)
    settings = {"steps": steps, "warmup": warmup, "chunk": chunk, "small": small, "overrides": list(overrides)}
    return report(results, Path(out), threads, device, settings)
