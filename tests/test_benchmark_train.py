"""tools/benchmark.py train: the JSON rows and the chart of a --small run, and the parity of the two timed paths
(a Lightning step and a bare-loop step from the same weights on the same batch end with the same weights).
Timings are never asserted."""

from __future__ import annotations

import json

import pytest

from conftest import run_tool


def test_small_run_writes_both_paths_the_ratio_and_the_data_row(tmp_path, env):
    proc = run_tool(["tools/benchmark.py", "train", "--small", "--tasks", "classification", "segmentation",
                     "--out", str(tmp_path)], env, timeout=300)
    assert "L/bare" in proc.stdout and "classification" in proc.stdout
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["small"] is True and record["threads"] >= 1 and record["target_lightning_vs_bare"] == 0.95
    assert [r["task"] for r in record["tasks"]] == ["classification", "segmentation"]
    for result in record["tasks"]:
        rows = {row["path"]: row for row in result["rows"]}
        assert set(rows) == {"lightning", "bare", "data"}
        assert all(row["images_per_s"] > 0 and row["task"] == result["task"] for row in rows.values())
        assert len(rows["lightning"]["chunk_images_per_s"]) == len(rows["bare"]["chunk_images_per_s"]) == 2
        assert result["lightning_vs_bare"] == pytest.approx(rows["lightning"]["images_per_s"] / rows["bare"]["images_per_s"])
        assert rows["lightning"]["vs_bare"] == result["lightning_vs_bare"]
        assert result["data_vs_lightning"] == pytest.approx(rows["data"]["images_per_s"] / rows["lightning"]["images_per_s"])
        assert rows["data"]["num_workers"] == 0 and rows["data"]["batches"] >= 2
        assert result["setting"]["batch_size"] == 4 and result["setting"]["width_mult"] == 0.35
    settings = {r["task"]: r["setting"] for r in record["tasks"]}
    # the project's defaults, composed from configs/: AdamW for both, the segmentation recipe's lr, NHWC weights
    assert settings["classification"]["optimizer"] == settings["segmentation"]["optimizer"] == "AdamW"
    assert settings["segmentation"]["lr"] == 6.0e-3 and settings["segmentation"]["channels_last"] is True
    assert settings["segmentation"]["scheduler"] == "PolyLR" and settings["classification"]["scheduler"] == "WarmupCosineLR"
    assert len(record["rows"]) == 6
    png = (tmp_path / "train.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_lightning_step_and_bare_step_agree(task, data_dir, monkeypatch, one_thread):
    """The comparison is apples to apples: the same model, batch, loss, optimizer (groups, lr) and schedule."""
    monkeypatch.setenv("VISION_TASKS_DATA", str(data_dir))
    from vision_tasks.train_benchmark import one_step_parity

    result = one_step_parity(task)
    assert result["moved"] > 1e-4 and result["lr"] > 0  # the step changed the weights
    assert result["max_param_diff"] <= 1e-6 * max(1.0, result["moved"]), result
    assert result["max_buffer_diff"] <= 1e-5, result  # BatchNorm running statistics
