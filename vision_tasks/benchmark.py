"""``tools/benchmark.py models``: latency, throughput and peak memory of the task models, side by side with
torchvision's MobileNetV3 peers and the authors' int8 TFLite releases, in one run (issue 13 item 3, issue 14).

Every (model, path) is measured in a fresh subprocess, one after another, on the same fixed-seed inputs:

- batch-1 latency: the median of ``repeats`` forwards after two warm-up forwards (ms);
- throughput: images/s at batch 32 (classifier) or 8 (the others), the median of ``repeats // 2`` (1 to 3) forwards
  after one warm-up;
- peak memory: the process's peak resident memory (``ru_maxrss``) above its resident memory just before the
  measured forwards (warm-ups included), at batch 1 and at the throughput batch. The peak is reset first
  (``/proc/self/clear_refs``, Linux), so that building the model does not hide it; CUDA: peak allocated memory.

Paths: ``eager``; ``channels_last`` (model and inputs); ``compile`` (``torch.compile``, compiled before the
timings); ``onnx`` (ONNX Runtime, the export of :func:`vision_tasks.export.export_onnx`, made in its own process
beforehand); ``onnx_int8`` (:func:`vision_tasks.export.quantize_onnx` of it, calibrated on 16 random images);
``litert`` (LiteRT, the export of :func:`vision_tasks.export.export_litert`, batch 1: a batch is as many invokes;
a detector's NMS on the host, as :func:`vision_tasks.export.check_export` runs it); ``litert_int8``
(:func:`vision_tasks.export.quantize_litert` of it, calibrated on 16 random images); ``tflite`` (the authors' int8
releases in the LiteRT interpreter, at their own input sizes).

Detection: random weights give every class a score of about 1 / (classes + 1), so with the models' default
thresholds (0.01 and 0.001) every anchor of every class would enter NMS, a cost of untrained weights. Both
detectors (ours and torchvision's) are therefore timed end to end with the same score threshold
(:data:`DETECTION_SCORE_THRESH`), which no random-init candidate passes: network, score conversion, box decoding,
per-class top-k and an (empty) NMS. The number of detections per image is recorded to show it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

TASKS = ("classification", "detection", "segmentation", "multitask")
PATHS = ("eager", "channels_last", "compile", "onnx", "onnx_int8", "litert", "litert_int8", "tflite")
PEER_PATHS = ("eager", "channels_last", "onnx")  # torchvision's models: eager (and channels_last, the baseline of
# issue 13's 4x throughput target) and ONNX Runtime
TORCH_PATHS = ("eager", "channels_last", "compile")
OURS = {"classification": "mobilenet_v2", "detection": "ssdlite_mobilenet_v2",
        "segmentation": "deeplabv3_mobilenet_v2", "multitask": "multitask_mobilenet_v2"}
PEERS = {"classification": "tv_mobilenet_v2", "detection": "tv_ssdlite320_mobilenet_v3_large",
         "segmentation": "tv_deeplabv3_mobilenet_v3_large"}
# the authors' int8 releases (shared/weights) and their own input sizes
TFLITE = {"classification": ("mobilenet_v2_1.0_224_quant.tflite", 224),
          "detection": ("ssdlite_mobilenet_v2_coco_0.5_200x200.tflite", 200),
          "segmentation": ("deeplabv3_mnv2_pascal_quant.tflite", 513)}
CLASSES = {"classification": 1000, "detection": 80, "segmentation": 21}
SIZES = {"classification": 224, "detection": 320, "segmentation": 513, "multitask": 320}
SMALL_SIZES = {"classification": 64, "detection": 96, "segmentation": 96, "multitask": 96}
BATCHES = {"classification": 32, "detection": 8, "segmentation": 8, "multitask": 8}
DETECTION_SCORE_THRESH = 0.3
CALIBRATION_IMAGES = 16
SEED = 0
# OpenMP threads that sleep instead of spinning when they wait: on a shared machine (more runnable threads than
# cores) torch's spinning threads wait for descheduled ones, and MobileNetV2 at 224 took 0.2-3.5 s a forward at 2
# threads instead of 55 ms (measured here). An OMP_WAIT_POLICY already set is kept; ONNX Runtime follows suit.
WAIT_POLICY = "PASSIVE"


# ----------------------------------------------------------------------------------------------- the models
# the joint model's layout: that of the default joint run (configs/datamodule/multitask_synthetic.yaml)
JOINT = {"output_stride": 16, "skip_feature": "layer7"}


def build(name: str, size: int, width: float):
    """The model ``name`` in eval mode, random init (seed :data:`SEED`), taking [0, 1] images of ``size``."""
    import torch

    from .models import (deeplabv3_mobilenet_v2, mobilenet_v2_classifier, multitask_mobilenet_v2,
                         ssdlite_mobilenet_v2)

    torch.manual_seed(SEED)
    if name == "mobilenet_v2":
        return mobilenet_v2_classifier(num_classes=CLASSES["classification"], width_mult=width).eval()
    if name == "ssdlite_mobilenet_v2":
        return ssdlite_mobilenet_v2(num_classes=CLASSES["detection"], image_size=size, width_mult=width,
                                    score_thresh=DETECTION_SCORE_THRESH).eval()
    if name == "deeplabv3_mobilenet_v2":
        return deeplabv3_mobilenet_v2(num_classes=CLASSES["segmentation"], output_stride=16, aspp=False,
                                      width_mult=width).eval()
    if name == "multitask_mobilenet_v2":
        heads = {"classification": {"num_classes": CLASSES["classification"]},
                 "detection": {"num_classes": CLASSES["detection"], "image_size": size,
                               "score_thresh": DETECTION_SCORE_THRESH},
                 "segmentation": {"num_classes": CLASSES["segmentation"], "skip_feature": JOINT["skip_feature"]}}
        return multitask_mobilenet_v2(heads=heads, width_mult=width, output_stride=JOINT["output_stride"]).eval()
    return _peer(name, size).eval()


def _peer(name: str, size: int):
    """torchvision's models (weights=None), each normalising its [0, 1] input inside as ours do."""
    import torch
    from torch import nn
    from torchvision import models as tvm
    from torchvision.models import detection, segmentation

    class Normalized(nn.Module):
        def __init__(self, net: nn.Module, key: str | None = None) -> None:
            super().__init__()
            self.net, self.key = net, key
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward(self, x):
            out = self.net((x - self.mean) / self.std)
            return out[self.key] if self.key else out

    if name == "tv_mobilenet_v2":
        return Normalized(tvm.mobilenet_v2(weights=None, num_classes=CLASSES["classification"]))
    if name == "tv_deeplabv3_mobilenet_v3_large":
        return Normalized(segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=CLASSES["segmentation"], aux_loss=False), "out")
    if name == "tv_ssdlite320_mobilenet_v3_large":
        model = detection.ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=CLASSES["detection"] + 1,
            score_thresh=DETECTION_SCORE_THRESH, detections_per_img=100)
        model.transform.fixed_size = (size, size)  # 320 at the size; --small runs it smaller
        return model
    raise ValueError(f"unknown model {name!r}")


class _Network:
    """What is exported where the whole inference cannot be: the network's outputs only (no decoding, no NMS)."""

    @staticmethod
    def wrap(name: str, model):
        from torch import nn

        if name == "tv_ssdlite320_mobilenet_v3_large":
            class SSDNetwork(nn.Module):  # torchvision's postprocess is data-dependent (torch.export refuses it)
                def __init__(self, ssd) -> None:
                    super().__init__()
                    self.ssd = ssd

                def forward(self, x):
                    t = self.ssd.transform
                    x = (x - x.new_tensor(t.image_mean).view(1, 3, 1, 1)) / x.new_tensor(t.image_std).view(1, 3, 1, 1)
                    out = self.ssd.head(list(self.ssd.backbone(x).values()))
                    return out["cls_logits"], out["bbox_regression"]

            return SSDNetwork(model).eval()
        return model


NETWORK_ONLY = {"tv_ssdlite320_mobilenet_v3_large": "backbone + head only (its postprocess cannot be exported)"}


def prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """In its own process: the float export of ``spec['model']`` for ``spec['runtime']`` (``onnx``, the default, or
    ``litert``) and, if asked, its int8 quantization. Ours are exported whole (a detector's decoding and NMS, the
    joint model's three heads); torchvision's peers, ONNX only, as their networks (:class:`_Network`)."""
    import torch

    from .export import (_dynamic_batch, _example, _quiet, export_litert, export_onnx, exportable, quantize_litert,
                         quantize_onnx)

    torch.set_num_threads(spec["threads"])
    name, size, runtime = spec["model"], spec["size"], spec.get("runtime", "onnx")
    model = build(name, size, spec["width"])
    float_path, int8_path = Path(spec[runtime]), Path(spec[f"{runtime}_int8"])
    start = time.perf_counter()
    if name in OURS.values():
        (export_onnx if runtime == "onnx" else export_litert)(exportable(model, size), float_path, image_size=size)
    elif runtime != "onnx":
        raise ValueError(f"{name}: the {runtime} paths are for our models (torchvision's peers run eager and ONNX)")
    else:
        import onnx

        module = _Network.wrap(name, model)
        with torch.no_grad(), _quiet():
            program = torch.onnx.export(module, (_example((size, size), module),), dynamo=True,
                                        dynamic_shapes=_dynamic_batch(), input_names=["images"], verbose=False)
        onnx.save(program.model_proto, str(float_path))
    result = {"export_s": time.perf_counter() - start}
    if spec.get("int8"):
        start = time.perf_counter()
        calibration = torch.rand(spec["calibration"], 3, size, size, generator=torch.Generator().manual_seed(SEED + 1))
        (quantize_onnx if runtime == "onnx" else quantize_litert)(float_path, int8_path, calibration)
        result["quantize_s"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------- measuring
def _reset_peak() -> None:
    try:  # Linux >= 4.0: resets the peak RSS (VmHWM, which ru_maxrss reads) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _runner(spec: dict[str, Any], model, notes: list[str]) -> tuple[Callable, Callable]:
    """(convert, run): ``convert(float NCHW tensor)`` -> the runtime's input (done outside the timings),
    ``run(input)`` -> outputs, finished (synchronised) when it returns."""
    import numpy as np
    import torch

    path, cuda = spec["path"], spec["device"] == "cuda"
    if path in TORCH_PATHS:
        device = torch.device(spec["device"])
        model = model.to(device)
        layout = torch.channels_last if (path == "channels_last" or cuda) else torch.contiguous_format
        model = model.to(memory_format=layout)
        if path == "compile":
            model = torch.compile(model)

        def run(x):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out = model(x)
            if cuda:
                torch.cuda.synchronize()
            return out

        return (lambda x: x.to(device).contiguous(memory_format=layout)), run
    if path in ("onnx", "onnx_int8"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = spec["threads"], 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(spec[path], options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return (lambda x: x.numpy()), (lambda x: session.run(None, {name: x}))
    if path in ("litert", "litert_int8"):
        from .export import _runner as export_runner

        run = export_runner(Path(spec[path]), num_threads=spec["threads"])  # batch 1: one invoke per image
        return (lambda x: x), run
    if path == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=spec["tflite"], num_threads=spec["threads"])
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        index, dtype = detail["index"], detail["dtype"]
        state = {"batch": 1}

        def convert(x):  # the release's quantized input: uint8 (or int8) NHWC; the values do not matter here
            q = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            return q if dtype == np.uint8 else (q.astype(np.int16) - 128).astype(np.int8)

        def run(q):
            if q.shape[0] != state["batch"]:
                try:  # a batch in one invoke where the graph allows it, else one invoke per image
                    interp.resize_tensor_input(index, list(q.shape))
                    interp.allocate_tensors()
                    state["batch"] = q.shape[0]
                except Exception:  # noqa: BLE001  (the input resized, the graph not: back to batch 1)
                    interp.resize_tensor_input(index, [1, *q.shape[1:]])
                    interp.allocate_tensors()
                    notes.append(f"LiteRT: batch {q.shape[0]} run as {q.shape[0]} batch-1 invokes")
                    state["batch"] = -1
            if state["batch"] == -1 and q.shape[0] > 1:
                for i in range(q.shape[0]):
                    interp.set_tensor(index, q[i:i + 1])
                    interp.invoke()
                return None
            interp.set_tensor(index, q)
            interp.invoke()
            return interp.get_tensor(interp.get_output_details()[0]["index"])

        return convert, run
    raise ValueError(f"unknown path {path!r}")


def _detections(out) -> float | None:
    """Mean detections per image of a detector's output (ours, torchvision's, the ONNX export's), else None."""
    if isinstance(out, dict) and isinstance(out.get("detection"), list):
        out = out["detection"]
    if isinstance(out, list) and out and isinstance(out[0], dict) and "boxes" in out[0]:
        return sum(len(o["boxes"]) for o in out) / len(out)
    if isinstance(out, (list, tuple)) and len(out) == 4 and getattr(out[3], "ndim", None) == 1:
        return float(sum(int(n) for n in out[3]) / len(out[3]))  # ExportableDetector: num_detections
    return None


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: one (model, path)'s batch-1 latency, throughput and peak memory."""
    import torch

    from .stats import count_params

    torch.set_num_threads(spec["threads"])
    notes: list[str] = []
    row: dict[str, Any] = {k: spec[k] for k in ("model", "family", "task", "path", "size", "batch", "width")}
    cuda = spec["device"] == "cuda"
    model = None
    if spec["path"] != "tflite":
        model = build(spec["model"], spec["size"], spec["width"])
        row["params"] = count_params(model)
    generator = torch.Generator().manual_seed(SEED)
    images = torch.rand(spec["batch"], 3, spec["size"], spec["size"], generator=generator)
    convert, run = _runner(spec, model, notes)
    x1, xb = convert(images[:1]), convert(images)
    if spec["path"] == "compile":  # compiled for both batch sizes before anything is timed
        start = time.perf_counter()
        run(x1)
        run(xb)
        row["compile_s"] = time.perf_counter() - start
    measured = {}
    for key, x, warmups, repeats in (("b1", x1, 2, spec["repeats"]),
                                     ("batch", xb, 1, max(1, min(3, spec["repeats"] // 2)))):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        _reset_peak()
        base_rss = _rss_mb()
        for _ in range(warmups):
            out = run(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = run(x)
            times.append(time.perf_counter() - start)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else max(0.0, _peak_mb() - base_rss)
        measured[key] = (statistics.median(times), peak)
        if key == "b1":
            dets = _detections(out)
            if dets is not None:
                row["detections_per_image"] = dets
    row["latency_ms"] = measured["b1"][0] * 1000
    row["throughput"] = spec["batch"] / measured["batch"][0]
    row["peak_mb"], row["peak_mb_batch"] = measured["b1"][1], measured["batch"][1]
    row["notes"] = sorted(set(notes))
    return row


def _child(argument: str) -> None:
    spec = json.loads(argument)
    result = prepare(spec) if spec.get("prepare") else measure(spec)
    print(json.dumps(result))


def _subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run :func:`measure` (or :func:`prepare`) in a fresh interpreter; ``{"error": ...}`` when it fails."""
    code = "import sys; from vision_tasks.benchmark import _child; _child(sys.argv[1])"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return {"error": (lines[-1] if lines else f"exit code {proc.returncode}")[-300:], "stderr": proc.stderr[-3000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------- the run
def plan(args) -> list[dict[str, Any]]:
    """The (model, path) settings of a run, in order: per task ours, the peer, the releases; then the joint
    model and our single-task models at its input size (for the sum)."""
    sizes = SMALL_SIZES if args.small else SIZES
    width = 0.35 if args.small else 1.0
    common = {"threads": args.threads, "device": args.device, "repeats": args.repeats, "width": width}
    settings = []

    def add(model, family, task, path, size, batch, **extra):
        settings.append({**common, "model": model, "family": family, "task": task, "path": path, "size": size,
                         "batch": batch, **extra})

    for task in args.tasks:
        batch = args.batch or (2 if args.small else BATCHES[task])
        for path in args.paths:
            if path == "tflite":
                continue
            add(OURS[task], "ours", task, path, sizes[task], batch)
        if task in PEERS and args.peers:
            for path in args.paths:
                if path in PEER_PATHS:
                    add(PEERS[task], "torchvision", task, path, sizes[task], batch, width=1.0)
        if "tflite" in args.paths and task in TFLITE:
            name, size = TFLITE[task]
            add(name, "tflite", task, "tflite", size, batch, width=1.0)
    if "multitask" in args.tasks and "eager" in args.paths:  # the single-task models at the joint input size
        joint = sizes["multitask"]
        for task in ("classification", "detection", "segmentation"):
            if not any(s["model"] == OURS[task] and s["size"] == joint and s["path"] == "eager" for s in settings):
                add(OURS[task], "ours", task, "eager", joint, args.batch or (2 if args.small else BATCHES["multitask"]),
                    role="joint-size reference")
    return settings


def run_models(args) -> dict[str, Any]:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is False)")
    args.threads = args.threads or torch.get_num_threads()
    settings = plan(args)
    tflite_dir = Path(args.tflite_dir).expanduser()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vision-tasks-bench-") as tmp:
        prepared: dict[str, dict[str, Any]] = {}
        for spec in settings:
            note = None
            if spec["device"] == "cuda" and spec["path"] not in TORCH_PATHS:
                note = f"skipped: --device cuda runs the PyTorch paths only ({spec['path']} is a CPU runtime here)"
            elif spec["path"] == "tflite":
                spec["tflite"] = str(tflite_dir / spec["model"])
                if not Path(spec["tflite"]).is_file():
                    note = f"skipped: {spec['tflite']} not found (--tflite-dir)"
            elif spec["path"] in ("onnx", "onnx_int8", "litert", "litert_int8"):
                runtime = spec["path"].removesuffix("_int8")
                key = f"{spec['model']}@{spec['size']}:{runtime}"
                if key not in prepared:
                    stem = Path(tmp) / f"{spec['model']}_{spec['size']}"
                    suffix = ".onnx" if runtime == "onnx" else ".tflite"
                    want_int8 = any(s["model"] == spec["model"] and s["path"] == f"{runtime}_int8" for s in settings)
                    prep = {**spec, "prepare": True, "runtime": runtime, runtime: f"{stem}{suffix}",
                            f"{runtime}_int8": f"{stem}.int8{suffix}",
                            "int8": want_int8, "calibration": 4 if args.small else CALIBRATION_IMAGES}
                    print(f"exporting {spec['model']}@{spec['size']} to {'ONNX' if runtime == 'onnx' else 'LiteRT'}"
                          f"{' + int8' if want_int8 else ''} ...", flush=True)
                    prepared[key] = {**_subprocess(prep, args.timeout), runtime: prep[runtime],
                                     f"{runtime}_int8": prep[f"{runtime}_int8"]}
                info = prepared[key]
                spec.update({runtime: info[runtime], f"{runtime}_int8": info[f"{runtime}_int8"]})
                if "error" in info or not Path(spec[spec["path"]]).is_file():
                    note = f"skipped: export failed ({info.get('error', 'no file')})"
            label = f"{spec['model']} {spec['path']} {spec['size']}px"
            if note:
                row = {k: spec[k] for k in ("model", "family", "task", "path", "size", "batch", "width")}
                row.update(skipped=note)
            else:
                print(f"measuring {label} ...", flush=True)
                row = _subprocess(spec, args.timeout)
                if "error" in row:
                    row = {**{k: spec[k] for k in ("model", "family", "task", "path", "size", "batch", "width")},
                           "skipped": f"skipped: failed ({row['error']})"}
            if spec.get("role"):
                row["role"] = spec["role"]
            if spec["path"] in ("onnx", "onnx_int8", "litert", "litert_int8") and spec["model"] in NETWORK_ONLY \
                    and "skipped" not in row:
                row.setdefault("notes", []).append(NETWORK_ONLY[spec["model"]])
            if spec["path"] == "tflite":
                row.setdefault("notes", []).append(f"int8 release at its own input {spec['size']}")
            if spec["path"] == "onnx_int8" and "skipped" not in row:
                row["notes"].append(f"QDQ int8 calibrated on {4 if args.small else CALIBRATION_IMAGES} random images")
            if spec["path"] in ("litert", "litert_int8") and "skipped" not in row:
                row.setdefault("notes", []).append("batch 1 graph: a batch is one invoke per image")
                if spec["path"] == "litert_int8":
                    row["notes"].append(f"int8 (ai-edge-quantizer) calibrated on "
                                        f"{4 if args.small else CALIBRATION_IMAGES} random images")
                if spec["model"] in (OURS["detection"], OURS["multitask"]):
                    row["notes"].append("NMS on the host")
            rows.append(row)
    record = {"device": device_name(args.device), "threads": args.threads, "torch": torch.__version__,
              "onnxruntime": _version("onnxruntime"), "ai_edge_litert": _version("ai_edge_litert"),
              "small": args.small, "repeats": args.repeats,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", WAIT_POLICY),
              "detection_score_thresh": DETECTION_SCORE_THRESH,
              "rows": rows, "joint": _ratios(rows, SMALL_SIZES["multitask"] if args.small else SIZES["multitask"])}
    return record


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.replace("_", "-"))
    except PackageNotFoundError:
        return None


def _ratios(rows: list[dict[str, Any]], joint_size: int) -> dict[str, Any] | None:
    """Adds ``latency_vs_peer`` / ``throughput_vs_peer`` (against torchvision's eager model of the task) to the
    rows; returns the joint model's comparison with the sum of our single-task models (eager, batch 1)."""
    ok = [r for r in rows if "latency_ms" in r]
    for row in ok:
        peer = next((r for r in ok if r["family"] == "torchvision" and r["task"] == row["task"]
                     and r["path"] == "eager" and not r.get("role")), None)
        if peer and not row.get("role"):
            row["latency_vs_peer"] = row["latency_ms"] / peer["latency_ms"]
            row["throughput_vs_peer"] = row["throughput"] / peer["throughput"]
    joint = next((r for r in ok if r["model"] == OURS["multitask"] and r["path"] == "eager"), None)
    singles = [next((r for r in ok if r["model"] == OURS[t] and r["path"] == "eager" and r["size"] == joint_size), None)
               for t in ("classification", "detection", "segmentation")]
    if joint is None or None in singles:
        return None
    total = sum(r["latency_ms"] for r in singles)
    params = sum(r["params"] for r in singles)
    joint["latency_vs_sum"] = joint["latency_ms"] / total
    return {"size": joint_size, "joint_latency_ms": joint["latency_ms"], "sum_latency_ms": total,
            "latency_ratio": joint["latency_ms"] / total, "target": 0.6,
            "single_latency_ms": {r["task"]: r["latency_ms"] for r in singles},
            "joint_params": joint["params"], "sum_params": params, "params_ratio": joint["params"] / params}


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return f"CUDA {torch.cuda.get_device_name()} (bf16 autocast, channels_last)"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} logical cores"


def table(record: dict[str, Any]) -> str:
    """The printed table: one line per (model, path)."""
    lines = [f"{record['device']}; {record['threads']} torch / ONNX Runtime / LiteRT threads; torch {record['torch']}, "
             f"onnxruntime {record['onnxruntime']}; OMP_WAIT_POLICY={record['omp_wait_policy']}; "
             f"batch-1 latency median of {record['repeats']}; "
             f"ratios against torchvision's eager model of the task",
             f"{'model':<44} {'path':<13} {'input':>5} {'batch-1 ms':>10} {'vs tv':>6} {'batch':>5} {'img/s':>8} "
             f"{'vs tv':>6} {'peak MB b1/bN':>14}  notes"]
    for row in record["rows"]:
        name = row["model"] + (" (ref.)" if row.get("role") else "")
        if "latency_ms" not in row:
            lines.append(f"{name:<44} {row['path']:<13} {row['size']:>5} {'-':>10} {'':>6} {row['batch']:>5} "
                         f"{'-':>8} {'':>6} {'':>14}  {row['skipped']}")
            continue
        vs = f"{row['latency_vs_peer']:.2f}" if "latency_vs_peer" in row else \
            (f"{row['latency_vs_sum']:.2f}S" if "latency_vs_sum" in row else "")
        tvs = f"{row['throughput_vs_peer']:.2f}" if "throughput_vs_peer" in row else ""
        notes = list(row.get("notes", []))
        if "detections_per_image" in row:
            notes.append(f"{row['detections_per_image']:.1f} det/img")
        if "compile_s" in row:
            notes.append(f"compiled in {row['compile_s']:.0f} s (not timed)")
        lines.append(f"{name:<44} {row['path']:<13} {row['size']:>5} {row['latency_ms']:>10.1f} {vs:>6} "
                     f"{row['batch']:>5} {row['throughput']:>8.1f} {tvs:>6} "
                     f"{row['peak_mb']:>6.0f}/{row['peak_mb_batch']:<7.0f}  {'; '.join(notes)}")
    joint = record.get("joint")
    if joint:
        lines.append(
            f"joint model at {joint['size']}px, eager batch 1: {joint['joint_latency_ms']:.1f} ms vs the sum of our "
            f"three single-task models at {joint['size']}px {joint['sum_latency_ms']:.1f} ms "
            f"({' + '.join(f'{v:.1f}' for v in joint['single_latency_ms'].values())}): {joint['latency_ratio']:.2f}x "
            f"(issue 14 asks <= {joint['target']}x; 'S' in the table); parameters {joint['joint_params'] / 1e6:.2f}M "
            f"vs {joint['sum_params'] / 1e6:.2f}M ({joint['params_ratio']:.2f}x)")
    return "\n".join(lines)


def plot(record: dict[str, Any], path: Path) -> None:
    """Horizontal bars, log scale: batch-1 latency and throughput per (model, path), coloured by path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in record["rows"] if "latency_ms" in r]
    labels = [f"{r['model']}{' (ref.)' if r.get('role') else ''} @{r['size']} {r['path']}" for r in rows]
    colours = {p: plt.get_cmap("tab10")(i) for i, p in enumerate(PATHS)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.32 * len(rows) + 1.8), sharey=True)
    ys = range(len(rows))[::-1]
    for axis, key, xlabel in ((left, "latency_ms", "batch-1 latency (ms, log)"),
                              (right, "throughput", "throughput (images/s, log; batch in the JSON)")):
        axis.barh(list(ys), [r[key] for r in rows], color=[colours[r["path"]] for r in rows])
        axis.set_xscale("log")
        axis.set_xlabel(xlabel)
        axis.grid(axis="x", which="both", alpha=0.3)
        for y, r in zip(ys, rows):
            axis.text(r[key], y, f" {r[key]:.0f}" if r[key] >= 10 else f" {r[key]:.1f}", va="center", fontsize=7)
    left.set_yticks(list(ys), labels, fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[p]) for p in PATHS if any(r["path"] == p for r in rows)]
    right.legend(handles, [p for p in PATHS if any(r["path"] == p for r in rows)], loc="lower right", fontsize=8)
    fig.suptitle(f"{record['device']}, {record['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def models(args) -> dict[str, Any]:
    """``tools/benchmark.py models``: run, print the table, write ``DIR/models.json`` and ``DIR/models.png``."""
    record = run_models(args)
    print(table(record))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(record, out / "models.png")
    print(f"written: {out / 'models.json'}, {out / 'models.png'}")
    return record
