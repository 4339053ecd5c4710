"""Work is never lost: a diverging run stops before it costs a good checkpoint, saves are atomic, resuming keeps
the run's history, and a run directory is never overwritten by another run or an evaluation."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from conftest import ROOT, TINY
from vision_tasks import runner
from vision_tasks.runner import CONFIG_DIR


def _cfg(primary: str, run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(primary, overrides=[f"run_dir={run_dir}", *overrides])


def _train(run_dir: Path, *overrides: str) -> Path:
    return runner.train(_cfg("train", run_dir, "task=classification", *TINY, *overrides))


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _finite(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _temporaries(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.is_dir() for p in folder.rglob("*") if ".tmp" in p.name]


HOST = socket.gethostname().replace("-", "_")  # as the temporary files of vision_tasks.files.atomic_write name it


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# 1. A diverging run is caught --------------------------------------------------------------------------------------

def test_exploding_schedule_stops_the_run_naming_step_epoch_and_last_good_checkpoint(tmp_path, env, one_thread):
    """A step schedule that multiplies the learning rate by 1e30 after the first epoch: the run stops in the second
    epoch with TrainingDiverged naming the step, the epoch and the checkpoint of the first epoch, which stays whole."""
    run_dir = tmp_path / "run"
    with pytest.raises(Exception) as err:
        _train(run_dir, "trainer.max_epochs=3", "scheduler=step", "task.scheduler_interval=epoch",
               "task.scheduler.gamma=1e30")
    message = str(err.value)
    assert type(err.value).__name__ == "TrainingDiverged", message
    last = run_dir / "checkpoints" / "last.ckpt"
    assert "training diverged at global step " in message and "(epoch 1, batch " in message, message
    assert f"Last good checkpoint: {last} (epoch 0, global step 2)" in message, message
    assert f"resume with ckpt_path={last}" in message
    for name in ("last.ckpt", "best.ckpt"):  # written after epoch 0, never replaced by the diverged weights
        checkpoint = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert checkpoint["global_step"] == 2 and _finite(run_dir / "checkpoints" / name), name
    assert not _temporaries(run_dir)


def test_metrics_json_is_valid_json_when_a_metric_is_nan(tmp_path):
    from vision_tasks.callbacks import RunArtifacts

    trainer = SimpleNamespace(is_global_zero=True, current_epoch=3, global_step=12,
                              callback_metrics={"val/loss": torch.tensor(float("nan")), "val/acc1": torch.tensor(0.5),
                                                "val/acc5": torch.tensor(float("inf")), "train/loss": torch.tensor(1.0)})
    RunArtifacts(str(tmp_path))._write(trainer, ("val/",), training=True)
    metrics = _strict_json((tmp_path / "metrics.json").read_text())
    assert metrics["val/loss"] is None and metrics["val/acc5"] is None and metrics["val/acc1"] == 0.5
    assert metrics["non_finite"] == {"val/loss": "nan", "val/acc5": "inf"}
    assert metrics["epoch"] == 3 and metrics["global_step"] == 12


def test_a_checkpoint_with_non_finite_weights_is_refused_and_the_previous_one_kept(tmp_path):
    from vision_tasks.checkpoints import AtomicCheckpointIO, CheckpointError

    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"refusing to write .*last.ckpt: the weights hold NaN .*\(w\)"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan"), 2.0])}, "epoch": 1}, path)
    assert path.read_bytes() == before and not _temporaries(tmp_path)


# 2. Atomic saves ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["mid-write", "fsync"])
def test_atomic_write_keeps_the_previous_file_whole_when_writing_fails(tmp_path, monkeypatch, where):
    from vision_tasks.files import atomic_write

    path = tmp_path / "metrics.json"
    atomic_write(path, "previous\n")

    def half_then_full_disk(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "fsync":
        def full_disk(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, half_then_full_disk if where == "mid-write" else b"new content")
    assert path.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def test_a_failed_checkpoint_save_keeps_last_ckpt_when_the_run_is_on_another_filesystem(tmp_path, env, one_thread,
                                                                                        monkeypatch):
    """The run directory on another filesystem than the system temp folder (where Lightning's save staged its file),
    and the disk filling up during the next save: last.ckpt and best.ckpt stay byte-identical, no temporary file stays."""
    other_fs = Path("/dev/shm")
    if not other_fs.is_dir() or os.stat(other_fs).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's temporary folder")
    run_dir = tmp_path / "run"
    _train(run_dir)
    saved = {name: (run_dir / "checkpoints" / name).read_bytes() for name in ("last.ckpt", "best.ckpt")}

    system_tmp = Path(tempfile.mkdtemp(dir=other_fs))
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))

    def is_checkpoint(fd: int) -> bool:
        return ".ckpt" in os.readlink(f"/proc/self/fd/{fd}")

    real_fsync, real_sendfile = os.fsync, os.sendfile

    def full_disk_fsync(fd):  # the disk fills while the checkpoint is flushed ...
        if is_checkpoint(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    def full_disk_copy(out_fd, in_fd, offset, count):  # ... or while it is copied across filesystems
        if is_checkpoint(out_fd):
            os.write(out_fd, b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "fsync", full_disk_fsync)
    monkeypatch.setattr(os, "sendfile", full_disk_copy)
    try:
        with pytest.raises(OSError, match="No space left"):
            _train(run_dir, "trainer.max_epochs=2", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
        for name, content in saved.items():
            assert (run_dir / "checkpoints" / name).read_bytes() == content, f"{name} was damaged by the failed save"
        assert not _temporaries(run_dir, system_tmp)
    finally:
        monkeypatch.undo()
        for p in system_tmp.iterdir():
            p.unlink()
        system_tmp.rmdir()


def test_a_killed_conversion_is_redone_by_running_it_again(tmp_path, monkeypatch):
    """A kill between the two files of tools/convert_weights.py, and the temporary file of a killed writer: the same
    command run again completes the conversion and removes the leftover."""
    import torchvision

    from vision_tasks import convert as convert_module

    torch.save(torchvision.models.mobilenet_v2(width_mult=0.35).state_dict(), tmp_path / "tv.pth")
    dst = tmp_path / "out" / "mnv2.safetensors"
    dst.parent.mkdir()
    stale = dst.parent / f".{dst.name}.tmp-{HOST}-{_dead_pid()}-0123abcd"
    stale.write_bytes(b"x" * 1000)  # what a kill during the write of the weights leaves
    real_replace = os.replace
    calls = []

    def killed_at_second_rename(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is stopped between publishing its two files
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", killed_at_second_rename)
    with pytest.raises(KeyboardInterrupt):
        convert_module.convert(tmp_path / "tv.pth", dst)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not dst.exists()  # the weights users pass never appear without their record

    weights, record = convert_module.convert(tmp_path / "tv.pth", dst)  # the same command again
    assert json.loads(record.read_text())["model_config"]["width_mult"] == 0.35
    from vision_tasks.models import model_from_weights

    model_from_weights(weights)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["mnv2.json", "mnv2.safetensors"]
    with pytest.raises(FileExistsError, match="nothing is overwritten"):
        convert_module.convert(tmp_path / "tv.pth", dst)


# 3. Resuming keeps the history -------------------------------------------------------------------------------------

def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with (run_dir / "logs" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_resuming_appends_to_the_logs_and_resuming_a_finished_run_changes_nothing(tmp_path, env, one_thread, capsys):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    _train(run_dir)
    first = _csv_rows(run_dir)
    assert {r["epoch"] for r in first if r["epoch"]} == {"0"}
    stale = run_dir / "checkpoints" / f".last.ckpt.tmp-{HOST}-{_dead_pid()}-0123abcd"
    stale.write_bytes(b"half a checkpoint")  # a save killed in an earlier run

    _train(run_dir, "trainer.max_epochs=2", f"ckpt_path={last}")
    rows = _csv_rows(run_dir)
    assert rows[:len(first)] == [{k: r.get(k, "") for k in rows[0]} for r in first]  # the first part's rows kept
    assert {r["epoch"] for r in rows if r["epoch"]} == {"0", "1"}
    assert [r["val/acc1"] != "" for r in rows].count(True) == 2  # one validation per epoch, none repeated
    metrics = _strict_json((run_dir / "metrics.json").read_text())
    assert metrics["epoch"] == 2 and metrics["global_step"] == 4 and "val/acc1" in metrics
    assert not stale.exists() and not _temporaries(run_dir)
    assert "max_epochs: 1" in (run_dir / "config.1.yaml").read_text()  # the first part's config is kept
    assert "max_epochs: 2" in (run_dir / "config.yaml").read_text()

    records = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    _train(run_dir, "trainer.max_epochs=2", f"ckpt_path={last}")  # finished: nothing to do
    out = capsys.readouterr().out
    assert "nothing to do" in out and "finished run" in out and "trainer.max_epochs=2" in out, out
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == records


def test_resumable_csv_logger_replaces_the_rows_a_resumed_run_logs_again(tmp_path):
    """A run killed after its last checkpoint logged steps that the resumed run does again, and a row cut short."""
    from vision_tasks.loggers import ResumableCSVLogger

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.csv").write_text("epoch,step,val/acc1\r\n0,1,0.5\r\n1,3,0.6\r\n2,5,0.")
    logger = ResumableCSVLogger(tmp_path, name="logs", version="")
    logger.log_metrics({"epoch": 1, "val/acc1": 0.7, "train/loss": 1.5}, step=3)
    logger.save()
    assert _csv_rows(tmp_path) == [{"epoch": "0", "step": "1", "train/loss": "", "val/acc1": "0.5"},
                                   {"epoch": "1", "step": "3", "train/loss": "1.5", "val/acc1": "0.7"}]


# 4. Run directories are protected ----------------------------------------------------------------------------------

def test_evaluation_into_a_training_run_directory_writes_a_subfolder(tmp_path, env, one_thread):
    run_dir = tmp_path / "run"
    _train(run_dir)
    records = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    cfg = _cfg("eval", run_dir, "task=classification", *TINY[:7], "trainer.limit_val_batches=2",
               "trainer.enable_progress_bar=false", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    metrics = runner.test(cfg)
    assert {p: p.read_bytes() for p in records} == records  # the training run's records are untouched
    (sub,) = [p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("test-")]
    assert _strict_json((sub / "metrics.json").read_text())["val/acc1"] == pytest.approx(metrics["val/acc1"])
    assert (sub / "config.yaml").is_file()
    runner.test(cfg)  # a second evaluation gets a folder of its own
    assert len([p for p in run_dir.iterdir() if p.name.startswith("test-")]) == 2


def test_training_into_a_directory_with_records_but_no_checkpoints_is_refused(tmp_path, env):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"val/acc1": 0.9}\n')
    (run_dir / "config.yaml").write_text("someone: else\n")
    with pytest.raises(FileExistsError, match=r"already holds the records of a run \(config.yaml, metrics.json\)"):
        _train(run_dir)
    assert (run_dir / "metrics.json").read_text() == '{"val/acc1": 0.9}\n'
    assert (run_dir / "config.yaml").read_text() == "someone: else\n"


def test_a_second_run_in_a_locked_directory_stops_at_once(tmp_path, env):
    from filelock import FileLock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with FileLock(run_dir / ".lock", timeout=0):  # the first run holds its directory
        start = time.monotonic()
        with pytest.raises(Exception, match=r"run directory .*run is in use by another run") as err:
            _train(run_dir)
        assert type(err.value).__name__ == "RunDirectoryBusy"
        assert time.monotonic() - start < 10
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # the second run wrote nothing


def test_default_run_directories_of_runs_started_together_differ(tmp_path):
    """Two runs started in the same second (the clock of Hydra's ${now:} held still) get two directories (and
    two .hydra/ folders)."""
    argv = ["train.py", "--cfg", "hydra", "--resolve"]
    same_second = (
        "import datetime, runpy, sys, hydra.core.utils as hydra_utils\n"
        "class Clock(datetime.datetime):\n"
        "    @classmethod\n"
        "    def now(cls, tz=None):\n"
        "        return cls(2030, 1, 1, 12, 0, 0)\n"
        "hydra_utils.datetime = Clock\n"
        f"sys.argv = {argv!r}\n"
        f"runpy.run_path({str(ROOT / 'tools' / 'train.py')!r}, run_name='__main__')\n"
    )
    command = [sys.executable, "-c", same_second]
    environ = dict(os.environ, PYTHONPATH=str(ROOT))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_JOB_ID", "SLURM_PROCID", "TORCHELASTIC_RUN_ID"):
        environ.pop(key, None)
    procs = [subprocess.Popen(command, cwd=tmp_path, env=environ, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    configs = [yaml.safe_load(proc.communicate(timeout=300)[0])["hydra"] for proc in procs]
    dirs, subdirs = [c["run"]["dir"] for c in configs], [c["output_subdir"] for c in configs]
    assert all(d.startswith("runs/classification/train-2030-01-01_12-00-00") for d in dirs), dirs
    assert dirs[0] != dirs[1]
    # Hydra's own record of each launch goes into a folder of its own: a resumed run, or one that the run
    # directory's lock refuses, never replaces the .hydra/ of the run that made the directory
    assert all(sub.startswith(".hydra/2030-01-01_12-00-00-") for sub in subdirs) and subdirs[0] != subdirs[1]


# --------------------------------------------------------------------------------------------------
# Distributed: a rank that stops answering


def test_ddp_config_has_a_short_process_group_timeout_on_cpu():
    from hydra.utils import instantiate

    from vision_tasks.distributed import CPU_TIMEOUT_S, WatchedDDPStrategy

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=ddp", "trainer.strategy.timeout_s=42"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, WatchedDDPStrategy) and strategy.timeout_s == 42
    assert CPU_TIMEOUT_S < 1800  # shorter than torch's 30 minutes
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        WatchedDDPStrategy(timeout_s=0)


def test_stalled_rank_is_the_one_behind_or_the_one_silent_longest(tmp_path):
    from vision_tasks.distributed import _PHASES, describe_stalled_ranks

    def beat(rank, step, phase, seconds_ago):
        (tmp_path / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "pid": 100 + rank, "host": "h", "phase": _PHASES[phase], "step": step, "epoch": 0,
             "time": 1000.0 - seconds_ago}))

    beat(0, 5, 1, 60), beat(1, 4, 2, 61), beat(2, 5, 1, 60)  # rank 1 never started step 5
    text = describe_stalled_ranks(tmp_path, 4, me=0, now=1000.0)
    assert "rank 1 (pid 101 on h) stopped answering: last heard from 61 s ago, at step 4" in text
    assert "rank 2 (" not in text and "rank(s) [3] never wrote a heartbeat" in text
    beat(1, 5, 1, 300)  # all in the same place: the one heard from least recently
    (tmp_path / "rank3.json").unlink(missing_ok=True)
    assert describe_stalled_ranks(tmp_path, 3, me=0, now=1000.0).startswith("rank 1 (pid 101")


@pytest.mark.slow
def test_a_rank_that_hangs_ends_the_ddp_run_after_the_timeout_naming_it(tmp_path, env):
    """Rank 1 sleeps at its second batch: rank 0 fails after trainer.strategy.timeout_s, names rank 1 and ends it."""
    run_dir = tmp_path / "run"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "tools/train.py", "task=classification", *TINY, "trainer.limit_train_batches=4",
         "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy.timeout_s=45",
         "+callbacks.hang._target_=rank_weights.HangRank", "+callbacks.hang.seconds=600", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "a collective timed out after 45 s (trainer.strategy.timeout_s)" in proc.stderr, proc.stderr[-3000:]
    assert "rank 1 (pid" in proc.stderr and "stopped answering" in proc.stderr
    pid = int(proc.stderr.split("rank 1 (pid ")[1].split()[0])
    time.sleep(1)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), \
        "the hung rank outlived the job"
    assert elapsed < 300  # not the 600 s the rank sleeps, nor torch's 30 minutes


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_ddp_run_within_seconds(tmp_path, env):
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "tools/train.py", "task=classification", *TINY, "trainer.limit_train_batches=4",
         "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy.timeout_s=300",
         "+callbacks.hang._target_=rank_weights.HangRank", "+callbacks.hang.kill=true",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert time.monotonic() - start < 200, "the survivors waited for the timeout"  # startup included


def test_atomic_write_without_durability_skips_fsync_only(tmp_path, monkeypatch):
    """Heartbeats are rewritten several times a step: no fsync, but still all or nothing for readers."""
    from vision_tasks import files

    synced = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(fd))
    files.atomic_write(tmp_path / "beat.json", '{"step": 1}', durable=False)
    assert synced == [] and (tmp_path / "beat.json").read_text() == '{"step": 1}'
    files.atomic_write(tmp_path / "record.json", "{}")
    assert len(synced) == 2  # the file, then its folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beat.json", "record.json"]  # no temporary left
