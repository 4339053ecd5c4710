"""tools/benchmark.py: each section runs and writes its table as JSON and a PNG (figures are for the notes, not asserted)."""

from __future__ import annotations

import json

from conftest import run_tool


def test_memory_efficient_section_measures_each_setting_in_its_own_process(tmp_path, env):
    proc = run_tool(["tools/benchmark.py", "memory", "--size", "160", "--splits", "1", "4", "--width", "0.35",
                     "--repeats", "1", "--out", str(tmp_path)], env)
    assert "splits  peak above start (MB)" in proc.stdout
    record = json.loads((tmp_path / "memory_efficient.json").read_text())
    assert [row["splits"] for row in record["rows"]] == [1, 4] and record["size"] == 160
    assert record["rows"][0]["output"] == record["rows"][1]["output"] == [1, 1280, 5, 5]  # layer19, same output
    assert all(row["peak_mb"] >= 0 and row["time_s"] > 0 for row in record["rows"])
    assert record["rows"][0]["peak_ratio"] == 1.0
    assert (tmp_path / "memory_efficient.png").stat().st_size > 1000
