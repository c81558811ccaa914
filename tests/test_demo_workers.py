"""demo/workers.py: stages computed in worker processes are recorded like in-process ones (CPU seconds too), a
stage waits for the stage named in ``after``, a rerun reuses every stage, a worker's DcdError reaches the parent
with its message, and map_jobs keeps the order of its arguments."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dcd_itr.demo.ledger import StageLedger
from dcd_itr.demo.workers import Stage, default_workers, map_jobs, run_stages
from dcd_itr.errors import CorruptFileError, DcdError


def write_after_spin(folder: str, name: str, needs: str | None, seconds: float) -> dict[str, object]:
    """Burn ``seconds`` of CPU, then write ``name``; reports whether ``needs`` was already written."""
    saw = needs is None or (Path(folder) / needs).is_file()
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    (Path(folder) / name).write_text(str(os.getpid()), encoding="utf-8")
    with (Path(folder) / "calls.log").open("a", encoding="utf-8") as log:
        log.write(name + "\n")
    return {"name": name, "saw_dependency": saw, "pid": os.getpid()}


def fail_with_corrupt_file(path: str) -> None:
    raise CorruptFileError(path, "not a shard")


def square(value: int) -> int:
    return value * value


def _stages(folder: Path) -> list[Stage]:
    def stage(name: str, needs: str | None, seconds: float) -> Stage:
        args = (str(folder), name, needs, seconds)
        return Stage(name, {"n": name}, write_after_spin, args, outputs=[folder / name], after=needs)

    return [
        stage("slow", None, 0.6),
        stage("first", None, 0.2),
        stage("second", "first", 0.2),
        stage("last", None, 0.1),
    ]


def _calls(folder: Path) -> list[str]:
    log = folder / "calls.log"
    return log.read_text(encoding="utf-8").split() if log.exists() else []


@pytest.mark.slow
def test_two_workers_record_every_stage_with_its_cpu_then_reuse_them(tmp_path):
    lines: list[str] = []
    ledger = StageLedger(tmp_path / "stages.json", log=lines.append)
    results = run_stages(ledger, _stages(tmp_path), workers=2)
    assert set(results) == {"slow", "first", "second", "last"}
    assert results["second"]["saw_dependency"]  # started only once "first" had finished
    assert results["slow"]["pid"] != os.getpid() and results["first"]["pid"] != os.getpid()
    assert sorted(_calls(tmp_path)) == ["first", "last", "second", "slow"]
    running = 0  # a stage is started (logged "...") only when one of the 2 workers is free
    for line in lines:
        running += line.endswith("] ...") - (" done in " in line)
        assert 0 <= running <= 2, lines
    records = StageLedger(tmp_path / "stages.json").records
    assert records["slow"]["cpu_seconds"] == pytest.approx(0.6, abs=0.3)  # measured in its worker
    assert all(records[name]["cpu_seconds"] >= 0.2 for name in ("first", "second"))
    assert all(any(line.startswith(f"[{name}] done in") for line in lines) for name in results)

    lines.clear()
    again = run_stages(StageLedger(tmp_path / "stages.json", log=lines.append), _stages(tmp_path), workers=2)
    assert again == results and len(_calls(tmp_path)) == 4  # nothing ran again
    reused = sorted(line.split("]")[0][1:] for line in lines if "reused" in line)
    assert reused == ["first", "last", "second", "slow"]


@pytest.mark.slow
def test_a_workers_dcd_error_reaches_the_parent_with_its_message(tmp_path):
    ledger = StageLedger(tmp_path / "stages.json", log=lambda line: None)
    stages = [
        Stage("bad", {}, fail_with_corrupt_file, ("shard-7.safetensors",)),
        Stage("ok", {}, square, (3,)),
    ]
    with pytest.raises(DcdError, match="shard-7.safetensors.*not a shard"):
        run_stages(ledger, stages, workers=2)
    assert "bad" not in StageLedger(tmp_path / "stages.json").records


@pytest.mark.slow
def test_map_jobs_keeps_the_order_of_its_arguments_in_two_workers():
    assert map_jobs(square, [(n,) for n in range(5)], workers=2) == [0, 1, 4, 9, 16]


def test_one_worker_runs_in_this_process_in_order(tmp_path):
    results = run_stages(StageLedger(tmp_path / "stages.json", log=lambda line: None), _stages(tmp_path), 1)
    assert {result["pid"] for result in results.values()} == {os.getpid()}
    assert _calls(tmp_path) == ["slow", "first", "second", "last"]
    assert map_jobs(square, [(2,), (3,)], workers=1) == [4, 9]


def test_default_workers_is_one_per_core_at_most_two(monkeypatch):
    for cores, expected in ((1, 1), (2, 2), (16, 2), (None, 1)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert default_workers() == expected
