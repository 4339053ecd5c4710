"""Bad paths are named with what is wrong and what to do: a symbolic link loop or an unreadable folder as data.root,
random bytes as a checkpoint or weight file, a plain state dict without metadata for tools/predict.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_tool
from backbones import WeightsError
from vision_tasks.checkpoints import CheckpointError, read_checkpoint_meta
from vision_tasks.data.common import check_data_root
from vision_tasks.data.errors import DataError
from vision_tasks.models import describe_weights


def test_a_symlink_loop_as_data_root_is_called_a_loop(tmp_path):
    loop = tmp_path / "data"
    loop.symlink_to(tmp_path / "other")
    (tmp_path / "other").symlink_to(loop)
    with pytest.raises(DataError) as err:
        check_data_root(loop)
    message = str(err.value)
    assert "data.root=" in message and str(loop) in message and "loop of symbolic links" in message, message
    assert "does not exist" not in message


def test_train_reports_a_symlink_loop_as_data_root(tmp_path, env):
    loop = tmp_path / "data"
    loop.symlink_to(loop)
    proc = run_tool(["tools/train.py", "task=classification", "data=imagenet", f"data.root={loop}",
                     f"hydra.run.dir={tmp_path / 'run'}"], env, expect_ok=False)
    assert "loop of symbolic links" in proc.stderr and "Traceback" not in proc.stderr[-3000:].split("DataError")[-1], \
        proc.stderr[-3000:]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root reads folders whatever their permissions say: chmod 000 blocks nothing")
def test_an_unreadable_data_root_says_permission_denied(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0)
    try:
        with pytest.raises(DataError) as err:
            check_data_root(folder)
    finally:
        folder.chmod(0o755)
    assert "permission denied" in str(err.value) and str(folder) in str(err.value) and "chmod" in str(err.value)


def test_missing_and_file_data_roots(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        check_data_root(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        check_data_root(tmp_path / "file")
    assert check_data_root(tmp_path) == tmp_path


def _random_files(folder: Path, n: int = 40) -> list[Path]:
    files = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        path = folder / f"random{seed}.ckpt"
        path.write_bytes(rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes())
        files.append(path)
    return files


def test_random_bytes_as_a_checkpoint_or_weights_give_the_projects_error(tmp_path):
    """Seeds 17 and 36 made torch.load raise a bare UnicodeDecodeError (others: IndexError: pop from empty list)."""
    for path in _random_files(tmp_path):
        with pytest.raises(CheckpointError) as err:
            read_checkpoint_meta(path, expected_task="classification")
        assert str(path) in str(err.value) and "expected a checkpoint" in str(err.value), str(err.value)
        with pytest.raises(WeightsError) as err:
            describe_weights(path)
        assert str(path) in str(err.value), str(err.value)


def test_predict_with_a_plain_state_dict_and_no_num_classes_says_what_to_set(tmp_path, env):
    from vision_tasks.models import mobilenet_v2_classifier

    weights = tmp_path / "plain.pth"
    torch.save(mobilenet_v2_classifier(num_classes=5, width_mult=0.35).state_dict(), weights)
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    proc = run_tool(["tools/predict.py", "task=classification", f"weights={weights}", f"input={tmp_path / 'x.png'}",
                     f"output={tmp_path / 'out'}", "model.width_mult=0.35"], env, expect_ok=False)
    assert "TypeError" not in proc.stderr and "set model.num_classes=N" in proc.stderr and str(weights) in proc.stderr, \
        proc.stderr[-3000:]
