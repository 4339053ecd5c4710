#!/usr/bin/env python
"""Measurements that a CPU shows side by side, in one run, as ratios (issue 13).

    python tools/benchmark.py memory [--size 1024] [--splits 1 2 4 8] [--width 1.0] [--out DIR]

``memory``: the paper's section 5.1, memory-efficient inference. Each bottleneck's inner (expanded) tensor
is computed in ``splits`` slices, so only ``1/splits`` of it is alive at a time. For each setting a fresh
process builds the backbone (eval mode, batch 1) and runs it on a ``size x size`` input. The peak is the
process's peak resident memory above what it held before the forward, so the settings do not share an
allocator. The time is the median of a few forwards. The results are printed as a table (ratios against
``splits=1``) and written to ``DIR/memory_efficient.json`` and ``DIR/memory_efficient.png``.

    python tools/benchmark.py models [--tasks classification detection segmentation multitask]
        [--paths eager channels_last compile onnx onnx_int8 litert litert_int8 tflite] [--peers/--no-peers] [--tflite-dir DIR]
        [--batch N] [--repeats N] [--threads N] [--device cpu|cuda] [--out DIR] [--small]

``models``: batch-1 latency, throughput and peak memory of our task models (random init, the issue's sizes) per
path (PyTorch eager / channels_last / torch.compile, ONNX Runtime float / int8, LiteRT float / int8, the authors' int8 TFLite
releases in LiteRT), beside torchvision's MobileNetV3 peers, each setting in a fresh process; the joint model
against the sum of the three single-task models. Table, ``DIR/models.json``, ``DIR/models.png``
(``vision_tasks.benchmark`` has the details).

    python tools/benchmark.py train [--tasks classification detection segmentation] [--steps N] [--out DIR]

``train``: images/s of a training step of each task's default run through its LightningModule in a Trainer
against a bare PyTorch loop (same model, batches, optimizer; interleaved step by step), and the data pipeline's
images/s with the configured workers (``vision_tasks.train_benchmark``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Run in a fresh interpreter per setting: ru_maxrss is the process's high-water mark, which never falls.
_MEASURE = r"""
import json, resource, statistics, sys, time
import torch
import backbones
size, splits, width, repeats, threads = (int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]),
                                         int(sys.argv[5]))
torch.set_num_threads(threads)
net = backbones.create_backbone("mobilenet_v2", width_mult=width, memory_efficient_splits=splits).eval()
x = torch.rand(1, 3, size, size)
with torch.inference_mode():
    net(torch.rand(1, 3, 64, 64))            # allocator and kernels warmed on a small input
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = net(x)
        times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"splits": splits, "peak_mb": (peak - before) / 1024, "time_s": statistics.median(times),
                  "input_mb": x.numel() * 4 / 2**20, "output": list(next(iter(out.values())).shape)}))
"""


def memory(args: argparse.Namespace) -> list[dict]:
    import torch

    threads = args.threads or torch.get_num_threads()
    rows = []
    for splits in args.splits:
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(args.size), str(splits), str(args.width), str(args.repeats),
             str(threads)],
            capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), **_env()},
        )
        if proc.returncode != 0:
            raise SystemExit(f"splits={splits}: the measuring process failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"MobileNetV2 backbone (width {args.width}), batch 1, {args.size}x{args.size}, eval, {threads} threads, "
          f"{_device()}")
    print(f"{'splits':>6} {'peak above start (MB)':>22} {'vs splits=' + str(base['splits']):>14} {'time (s)':>9} "
          f"{'vs':>6}")
    for row in rows:
        row["peak_ratio"] = row["peak_mb"] / base["peak_mb"] if base["peak_mb"] else float("nan")
        row["time_ratio"] = row["time_s"] / base["time_s"]
        print(f"{row['splits']:>6} {row['peak_mb']:>22.0f} {row['peak_ratio']:>14.2f} {row['time_s']:>9.3f} "
              f"{row['time_ratio']:>6.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"size": args.size, "width": args.width, "threads": threads, "device": _device(), "rows": rows}
    (out / "memory_efficient.json").write_text(json.dumps(record, indent=2) + "\n")
    _plot(rows, out / "memory_efficient.png", f"MobileNetV2 {args.size}x{args.size}, batch 1 (paper 5.1)")
    print(f"written: {out / 'memory_efficient.json'}, {out / 'memory_efficient.png'}")
    return rows


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(row["splits"]) for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.bar(labels, [row["peak_mb"] for row in rows], color="tab:blue")
    left.set(xlabel="memory_efficient_splits", ylabel="peak memory above start (MB)")
    right.bar(labels, [row["time_s"] * 1000 for row in rows], color="tab:orange")
    right.set(xlabel="memory_efficient_splits", ylabel="forward time (ms)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def _device() -> str:
    from vision_tasks.benchmark import device_name

    return device_name("cpu")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    mem = sub.add_parser("memory", help="peak memory and time of memory_efficient_splits (paper section 5.1)")
    mem.add_argument("--size", type=int, default=1024, help="input side (default 1024)")
    mem.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4, 8])
    mem.add_argument("--width", type=float, default=1.0)
    mem.add_argument("--repeats", type=int, default=3, help="forwards timed per setting (median)")
    mem.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    mem.add_argument("--out", default="runs/benchmark", help="folder for the JSON and the PNG")
    tr = sub.add_parser("train", help="training images/s: Lightning Trainer vs a bare PyTorch loop, and the data pipeline")
    tr.add_argument("--tasks", nargs="+", default=["classification", "detection", "segmentation"],
                    choices=["classification", "detection", "segmentation"])
    tr.add_argument("--steps", type=int, help="timed training steps per path (default 30; --small: 2)")
    tr.add_argument("--warmup", type=int, help="untimed steps per path first (default 3; --small: 1)")
    tr.add_argument("--chunk", type=int, help="steps per interleaved chunk (default 1; --small: 1)")
    tr.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    tr.add_argument("--small", action="store_true", help="tiny width, input and batch, 2 steps: a smoke test")
    tr.add_argument("--out", default="runs/benchmark", help="folder for train.json and train.png")
    tr.add_argument("overrides", nargs="*", help="Hydra overrides for every task (data.batch_size=8 ...)")
    from vision_tasks.benchmark import PATHS, TASKS

    mod = sub.add_parser("models", help="latency / throughput / memory of the task models, their peers and paths")
    mod.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    mod.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    mod.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                     help="torchvision's mobilenet_v2 / ssdlite320_mobilenet_v3_large / deeplabv3_mobilenet_v3_large")
    mod.add_argument("--tflite-dir", default=str(ROOT.parent / "shared" / "weights"),
                     help="folder of the authors' int8 .tflite releases (default ../shared/weights)")
    mod.add_argument("--batch", type=int, default=None, help="throughput batch (default 32 classifier, 8 others)")
    mod.add_argument("--repeats", type=int, default=10, help="batch-1 forwards timed (median)")
    mod.add_argument("--threads", type=int, default=0, help="torch / ONNX Runtime / LiteRT threads (default: torch's)")
    mod.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                     help="cuda: the PyTorch paths in bf16 autocast + channels_last")
    mod.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one setting's process")
    mod.add_argument("--out", default="runs/benchmark", help="folder for models.json and models.png")
    mod.add_argument("--small", action="store_true",
                     help="tiny settings for tests: width 0.35, inputs 64-96, batch 2, repeats 1")
    args = parser.parse_args(argv)
    if args.what == "memory":
        memory(args)
    elif args.what == "models":
        from vision_tasks.benchmark import models

        for name in ("batch", "repeats", "threads"):
            value = getattr(args, name)
            if value is not None and value < (0 if name == "threads" else 1):
                parser.error(f"--{name} must be positive, got {value}")
        if args.small:
            args.batch, args.repeats = args.batch or 2, 1
        models(args)
    elif args.what == "train":
        from vision_tasks.train_benchmark import run

        steps, warmup, chunk = (2, 1, 1) if args.small else (30, 3, 1)
        run(args.tasks, steps=args.steps or steps, warmup=args.warmup if args.warmup is not None else warmup,
            chunk=args.chunk or chunk, out=Path(args.out), threads=args.threads or None, small=args.small,
            overrides=args.overrides)


if __name__ == "__main__":
    main()
