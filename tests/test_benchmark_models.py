"""``tools/benchmark.py models`` at its ``--small`` settings: rows, ratios and files (no timings asserted)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import run_tool


def _rows(out):
    """The record, its rows without the joint-size references, and all its rows."""
    record = json.loads((out / "models.json").read_text())
    assert (out / "models.png").stat().st_size > 0
    return record, [r for r in record["rows"] if not r.get("role")], record["rows"]


def test_models_small_classification_eager_onnx_int8(env, tmp_path):
    out = tmp_path / "bench"
    proc = run_tool(["tools/benchmark.py", "models", "--small", "--tasks", "classification", "--paths", "eager",
                     "onnx", "onnx_int8", "--threads", "1", "--out", str(out)], env, timeout=600)
    record, rows, _ = _rows(out)
    assert record["threads"] == 1 and record["small"] and record["device"].startswith("CPU")
    # one row per model x path: ours on the three paths, torchvision's peer on eager and ONNX Runtime
    assert sorted((r["model"], r["path"]) for r in rows) == sorted(
        [("mobilenet_v2", p) for p in ("eager", "onnx", "onnx_int8")]
        + [("tv_mobilenet_v2", p) for p in ("eager", "onnx")])
    for row in rows:
        assert "skipped" not in row, row
        assert row["latency_ms"] > 0 and row["throughput"] > 0 and row["peak_mb"] >= 0, row
        assert row["size"] == 64 and row["batch"] == 2 and row["width"] in (0.35, 1.0)
        assert row["latency_vs_peer"] > 0 and row["throughput_vs_peer"] > 0
    peer = next(r for r in rows if r["model"] == "tv_mobilenet_v2" and r["path"] == "eager")
    assert peer["latency_vs_peer"] == pytest.approx(1.0)
    assert record["joint"] is None  # no multitask asked
    assert "tv_mobilenet_v2" in proc.stdout and "vs tv" in proc.stdout


def test_models_small_joint_against_the_sum(env, tmp_path):
    out = tmp_path / "bench"
    proc = run_tool(["tools/benchmark.py", "models", "--small", "--tasks", "multitask", "--paths", "eager", "onnx",
                     "--threads", "1", "--out", str(out)], env, timeout=600)
    record, rows, every = _rows(out)
    assert sorted((r["model"], r["path"]) for r in rows) == [("multitask_mobilenet_v2", "eager"),
                                                             ("multitask_mobilenet_v2", "onnx")]
    # our three single-task models at the joint model's input size, eager, for the sum
    refs = sorted(r["model"] for r in every if r.get("role"))
    assert refs == ["deeplabv3_mobilenet_v2", "mobilenet_v2", "ssdlite_mobilenet_v2"]
    assert all(r["size"] == 96 and r["path"] == "eager" and r["latency_ms"] > 0 for r in every if r.get("role"))
    joint = record["joint"]
    assert joint["size"] == 96 and joint["target"] == 0.6
    assert joint["latency_ratio"] == pytest.approx(joint["joint_latency_ms"] / joint["sum_latency_ms"])
    assert joint["sum_latency_ms"] == pytest.approx(sum(joint["single_latency_ms"].values()))
    assert 0 < joint["joint_params"] < joint["sum_params"]  # one backbone instead of three
    eager = next(r for r in rows if r["path"] == "eager")
    assert eager["latency_vs_sum"] == pytest.approx(joint["latency_ratio"])
    assert eager["detections_per_image"] == 0  # random init, the shared score threshold: no NMS work
    assert "issue 14" in proc.stdout


@pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None, reason="needs litert-torch (the litert extra)")
def test_models_small_litert_paths_run_ours_with_the_nms_on_the_host(env, tmp_path):
    out = tmp_path / "bench"
    proc = run_tool(["tools/benchmark.py", "models", "--small", "--tasks", "detection", "--paths", "litert",
                     "litert_int8", "--no-peers", "--threads", "1", "--out", str(out)], env, timeout=900)
    record, rows, _ = _rows(out)
    assert sorted(r["path"] for r in rows) == ["litert", "litert_int8"] and record["ai_edge_litert"]
    for row in rows:
        assert "skipped" not in row, row
        assert row["model"] == "ssdlite_mobilenet_v2" and row["latency_ms"] > 0 and row["throughput"] > 0
        assert row["detections_per_image"] == 0  # the host's select_detections ran (its count read)
        assert "NMS on the host" in row["notes"] and "one invoke per image" in "; ".join(row["notes"])
    assert "int8 (ai-edge-quantizer)" in "; ".join(next(r for r in rows if r["path"] == "litert_int8")["notes"])
    assert "litert_int8" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_models_cuda_without_cuda_is_refused(env, tmp_path):
    proc = run_tool(["tools/benchmark.py", "models", "--small", "--device", "cuda", "--out", str(tmp_path / "b")],
                    env, expect_ok=False, timeout=120)
    assert "CUDA is not available" in proc.stderr
    assert not (tmp_path / "b").exists()


def test_models_bad_task_or_path_is_an_argparse_error(env, tmp_path):
    for args in (["--tasks", "pose"], ["--paths", "tensorrt"], ["--repeats", "0"]):
        proc = run_tool(["tools/benchmark.py", "models", *args, "--out", str(tmp_path)], env, expect_ok=False,
                        timeout=120)
        assert proc.returncode == 2 and "usage:" in proc.stderr
        assert ("invalid choice" in proc.stderr) or ("must be positive" in proc.stderr)
