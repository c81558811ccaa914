"""Faults: a killed job resumes to the result of an uninterrupted one, a damaged file is named and refused, and a
full disk or an unwritable folder is a clear error that leaves earlier results as they were.

- SIGKILL (a real ``python -m dcd_itr.cli`` subprocess, killed at a seeded random point found by polling a
  progress marker) during a feature-cache run, a teacher-score-cache build (``dcd distill`` while mining) and a
  distillation run (mid-training, a checkpoint every step). The index build is covered the same way by
  ``tests/test_search_cli.py::test_sigkill_during_build_then_rerun_equals_uninterrupted``. Every computation here
  is deterministic on CPU with one thread, so the reruns are compared bit for bit: file bytes for feature shards,
  model weights and manifests; tensors and metadata for teacher-score rounds (safetensors writes a metadata
  dict with two or more keys in a per-process hash order, so those files' bytes differ between processes while
  their content does not). Wall-clock fields (``epoch_seconds``, ``metrics_bytes``) are the only exclusions.
- Kills at the worst moments, made deterministic in-process: in the middle of a shard write, and between the
  files of a checkpoint.
- Corrupt checkpoints, feature shards, teacher-score rounds, index files and manifests, through the CLI: exit
  code 2, the path in stderr, no traceback.
- Disk full (a real kernel refusal: ``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored, so writes fail with ``EFBIG``) and
  unwritable output folders. Tests run as root here, where ``chmod 0o555`` does not stop writes; the unwritable
  folder is therefore a path below a regular file (``ENOTDIR``), and the chmod variant runs only when it works.

Set ``DCD_FAULT_SEED`` to move the kill points.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import search_fixtures
from dcd_itr import features as features_module
from dcd_itr import train as train_module
from dcd_itr.cli import main
from dcd_itr.distill import teacher_cache as teacher_cache_module
from dcd_itr.errors import CorruptFileError, OutputError
from dcd_itr.features import load_feature_cache
from dcd_itr.models.dual import DualConfig
from dcd_itr.models.fusion import FusionConfig, FusionCrossEncoder
from dcd_itr.train import TrainConfig, recover_checkpoint
from test_train import DualTask, _fit_dual, assert_states_equal, state_of

SEED = int(os.environ.get("DCD_FAULT_SEED", "8"))
DCD = [sys.executable, "-m", "dcd_itr.cli"]
ENV = {  # one thread: float sums do not depend on the thread count, so reruns are bit-identical
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
TORCH_DEFAULT_SEED = (
    67280421310721  # the CPU generator's seed in a fresh process (torch's default_rng_seed_val)
)


# ----------------------------------------------------------------------------- helpers


def run_dcd(*args: str, preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """``dcd ARGS`` in a fresh process (one thread), to completion."""
    return subprocess.run(
        [*DCD, *args], env=ENV, capture_output=True, text=True, timeout=900, preexec_fn=preexec_fn
    )


def kill_when(args: list[str], ready: Callable[[], bool], log: Path) -> None:
    """Start ``dcd ARGS``, poll ``ready()`` every 2 ms and SIGKILL the process the moment it is true.

    Fails if the process ends on its own first (the kill point must fall inside the run).
    """
    with open(log, "wb") as stderr:
        process = subprocess.Popen([*DCD, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 600
        try:
            while not ready():
                if process.poll() is not None:
                    pytest.fail(f"`dcd {args[0]}` ended before the kill point:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"`dcd {args[0]}` never reached the kill point")
                time.sleep(0.002)
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


@contextlib.contextmanager
def like_a_fresh_process() -> Iterator[None]:
    """One thread and torch's initial RNG state, as in a fresh `dcd` process; restored afterwards."""
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    torch.set_num_threads(1)
    torch.manual_seed(TORCH_DEFAULT_SEED)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)


def in_process(*args: str) -> None:
    """``dcd ARGS`` in this process, computing what a fresh process would (see :func:`like_a_fresh_process`)."""
    with like_a_fresh_process():
        assert main([*args]) == 0


def files_under(root: Path, pattern: str = "*") -> dict[str, Path]:
    """Files below ``root`` matching ``pattern``, by path relative to ``root``."""
    return {str(p.relative_to(root)): p for p in sorted(root.rglob(pattern)) if p.is_file()}


def temporary_files(root: Path) -> list[Path]:
    """What an interrupted atomic write leaves behind (``.NAME.XXXX.tmp``)."""
    return [p for p in root.rglob(".*.tmp")]


def assert_same_bytes(left: Path, right: Path, pattern: str) -> None:
    """Same set of files matching ``pattern`` below both roots, byte for byte."""
    left_files, right_files = files_under(left, pattern), files_under(right, pattern)
    assert left_files.keys() == right_files.keys() and left_files
    for name, path in left_files.items():
        assert path.read_bytes() == right_files[name].read_bytes(), name


def assert_same_safetensors(left: Path, right: Path, pattern: str) -> None:
    """Same files, same tensors bit for bit, same metadata (byte order of the header may differ)."""
    left_files, right_files = files_under(left, pattern), files_under(right, pattern)
    assert left_files.keys() == right_files.keys() and left_files
    for name, path in left_files.items():
        with safe_open(str(path), "pt") as a, safe_open(str(right_files[name]), "pt") as b:
            assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys()), name
            for key in sorted(a.keys()):
                assert torch.equal(a.get_tensor(key), b.get_tensor(key)), (name, key)


TIMING_FIELDS = (
    "epoch_seconds",
    "train_cpu_minutes",
)  # wall and CPU clocks: real, but no two runs share them


def without_timing(records: list[dict]) -> list[dict]:
    """Log records (and their validation dicts) without the clock fields."""
    return [
        {
            k: (without_timing([v])[0] if k == "validation" else v)
            for k, v in record.items()
            if k not in TIMING_FIELDS
        }
        for record in records
    ]


def read_jsonl(path: Path) -> list[dict]:
    """One dict per line of a JSONL file."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_run(left: Path, right: Path) -> None:
    """Two training run folders hold the same trained model, the same checkpoint and the same log."""
    for name in ("best/model.safetensors", "last/model.safetensors", "last/rng.safetensors"):
        assert (left / name).read_bytes() == (right / name).read_bytes(), name
    best_metrics = [json.loads((folder / "best/metrics.json").read_text()) for folder in (left, right)]
    assert without_timing(best_metrics[:1]) == without_timing(best_metrics[1:])
    states = [json.loads((folder / "last/state.json").read_text()) for folder in (left, right)]
    for state in states:
        state.pop("metrics_bytes")  # the log's size: its lines hold wall-clock seconds
        state["checksums"].pop("optimizer.pt")  # torch.save names its zip records after the (temporary) file
        state["history"] = without_timing(state["history"])
    assert states[0] == states[1]
    assert without_timing(read_jsonl(left / "metrics.jsonl")) == without_timing(
        read_jsonl(right / "metrics.jsonl")
    )
    optimizers = [torch.load(f / "last/optimizer.pt", weights_only=True) for f in (left, right)]
    for key, moments in optimizers[0]["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, optimizers[1]["optimizer"]["state"][key][name]), (key, name)
    assert not (left / "last.next").exists() and not (left / "last.prev").exists()


def cli_error(capsys, *args: str) -> str:
    """Run ``dcd ARGS`` in this process; it must exit 2 with one message (returned), not a traceback."""
    capsys.readouterr()
    code = main([*args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") <= 12
    return err


# ----------------------------------------------------------------------------- the workspace


@pytest.fixture(scope="module")
def workspace(feature_workspace) -> dict:
    """A 48-image shapes dataset, tiny towers, its feature cache, a random fusion teacher and run configs."""
    shared = feature_workspace(
        "shapes", num_images=48, shard_size=8
    )  # train 32 / 64, val 8 / 16, test 8 / 16
    root, data, feature_args = shared["root"], shared["data"], shared["feature_args"]
    image_view, text_view = shared["image_view"], shared["text_view"]
    dual = DualConfig(image_view, text_view, image_dim=32, text_dim=32, embed_dim=8, hidden_dim=16)
    torch.manual_seed(0)
    teacher = FusionCrossEncoder(
        FusionConfig(
            similarity_paths=[dual],
            fusion_image_view=image_view,
            fusion_text_view=text_view,
            image_token_dim=32,
            text_token_dim=32,
            image_grid=2,
            max_text_tokens=16,
            width=16,
            num_layers=2,
            num_heads=2,
            dropout=0.0,
        )
    )
    torch.nn.init.normal_(teacher.head[-1].weight, std=1.0)  # a live fusion term
    search_fixtures.save_model(teacher.eval(), root / "teacher")
    dual_yaml = {
        "image_view": image_view,
        "text_view": text_view,
        "image_dim": 32,
        "text_dim": 32,
        "hidden_dim": 16,
        "embed_dim": 8,
    }
    return {
        "root": root,
        "data": data,
        "feature_args": feature_args,
        "dual": dual_yaml,
        "distill": {
            "data": str(data),
            "features": str(root / "cache"),
            "teacher": str(root / "teacher"),
            "student": "dual",
            "dual": dual_yaml,
            "pool_size": 6,
            "num_candidates": 3,
            "rounds": 12,  # 24 round files to be killed among
            "anchors_per_batch": 4,
            "train": {"epochs": 2, "lr": 0.01, "checkpoint_every": 1, "log_every": 1},
        },  # the caller adds out and teacher_cache
    }


def write_config(path: Path, config: dict) -> Path:
    """Write a run config as YAML; returns its path."""
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dual_run(workspace) -> Path:
    """A finished two-epoch `dcd train-dual` run (checkpoint every step) and its config."""
    root = workspace["root"]
    config = {
        "data": str(workspace["data"]),
        "features": str(root / "cache"),
        "out": str(root / "dual"),
        "batch_size": 8,
        "model": workspace["dual"],
        "train": {"epochs": 2, "lr": 0.01, "checkpoint_every": 1},
    }
    path = write_config(root / "dual.yaml", config)
    in_process("train-dual", "--config", str(path), "--quiet")
    return path


def copy_run(config_path: Path, destination: Path) -> Path:
    """A copy of a run folder and its config pointing at the copy (so resuming it is allowed)."""
    config = yaml.safe_load(config_path.read_text())
    shutil.copytree(config["out"], destination)
    config["out"] = str(destination)
    saved = yaml.safe_load((destination / "config.yaml").read_text())
    saved["out"] = str(destination)
    (destination / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return write_config(destination.with_suffix(".yaml"), config)


# ----------------------------------------------------------------------------- SIGKILL, then rerun


def shard_count(folder: Path) -> int:
    """Complete feature shards (final names) below ``folder``."""
    return len(list(folder.rglob("shard-*.safetensors"))) if folder.exists() else 0


def writing_a_folder(folder: Path) -> bool:
    """Some feature folder below ``folder`` has its manifest written and not yet marked complete (manifests are
    written atomically, so a file that exists is whole)."""
    return any(not json.loads(p.read_text())["complete"] for p in folder.rglob("manifest.json"))


@pytest.mark.slow
def test_sigkill_during_feature_caching_then_rerun_equals_uninterrupted(workspace, tmp_path):
    args = ["features", *workspace["feature_args"], "--shard-size", "2", "--batch-size", "2"]
    total = (32 + 8 + 8) // 2 + (64 + 16 + 16) // 2  # image shards + caption shards, 2 items each
    target = random.Random(SEED).randint(1, total // 2)
    killed = tmp_path / "killed"

    # kill inside a folder: on a fast machine the target shard can be a folder's last, and between two folders
    # every manifest on disk is complete (the 2 ms poll raced the last shard and the manifest's update)
    def ready() -> bool:
        return shard_count(killed) >= target and writing_a_folder(killed)

    kill_when([*args, "--out", str(killed)], ready, tmp_path / "kill.log")
    assert target <= shard_count(killed) < total, f"seed {SEED}: killed after {shard_count(killed)} shards"

    # No partial file under a final name, and an incomplete cache refuses to load.
    for shard in killed.rglob("shard-*.safetensors"):
        load_file(str(shard))
    manifests = [json.loads(p.read_text()) | {"dir": p.parent} for p in killed.rglob("manifest.json")]
    incomplete = [m["dir"] for m in manifests if not m["complete"]]
    assert incomplete, "the kill fell after the last shard"
    with pytest.raises(CorruptFileError, match="incomplete"):
        load_feature_cache(incomplete[0])
    # What a kill in the middle of a write leaves: temporary files. They are never read as shards.
    for folder in {p.parent for p in killed.rglob("manifest.json")}:
        (folder / ".shard-00000.safetensors.dead.tmp").write_bytes(b"\x00" * 100)
        (folder / ".shard-00099.safetensors.dead.tmp").write_bytes(b"garbage")

    rerun = run_dcd(*args, "--out", str(killed))
    assert rerun.returncode == 0, rerun.stderr
    clean = tmp_path / "clean"
    in_process(*args, "--out", str(clean))
    assert_same_bytes(killed, clean, "shard-*.safetensors")
    assert_same_bytes(killed, clean, "manifest.json")


@pytest.fixture(scope="module")
def reference_distill(workspace, tmp_path_factory) -> dict:
    """An uninterrupted `dcd distill` (mining 12 rounds, then 2 epochs) in a fresh process: the reference."""
    root = tmp_path_factory.mktemp("reference")
    config = {**workspace["distill"], "out": str(root / "out"), "teacher_cache": str(root / "scores")}
    path = write_config(root / "distill.yaml", config)
    result = run_dcd("distill", "--config", str(path), "--quiet")
    assert result.returncode == 0, result.stderr
    return {"out": root / "out", "scores": root / "scores"}


def round_files(folder: Path) -> list[Path]:
    """Complete teacher-score round files (final names) below ``folder``."""
    return list(folder.rglob("round-*.safetensors")) if folder.exists() else []


@pytest.mark.slow
def test_sigkill_while_mining_teacher_scores_then_rerun_equals_uninterrupted(
    workspace, reference_distill, tmp_path
):
    scores = tmp_path / "scores"
    config = {**workspace["distill"], "out": str(tmp_path / "out"), "teacher_cache": str(scores)}
    path = write_config(tmp_path / "distill.yaml", config)
    target = random.Random(SEED + 1).randint(1, 12)  # of 24 round files
    kill_when(
        ["distill", "--config", str(path), "--quiet"],
        lambda: len(round_files(scores)) >= target,
        tmp_path / "log",
    )
    written = round_files(scores)
    assert target <= len(written) < 24, f"seed {SEED}: killed after {len(written)} round files"
    assert not (tmp_path / "out" / "last").exists()  # killed while mining, before training
    for round_file in written:  # every file under a final name is whole
        load_file(str(round_file))

    rerun = run_dcd("distill", "--config", str(path), "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert_same_safetensors(scores, reference_distill["scores"], "round-*.safetensors")
    assert_same_bytes(scores, reference_distill["scores"], "manifest.json")
    assert not temporary_files(scores)
    assert_same_run(tmp_path / "out", reference_distill["out"])  # and the student trained on them


@pytest.mark.slow
def test_sigkill_mid_distillation_then_rerun_equals_uninterrupted(workspace, reference_distill, tmp_path):
    out = tmp_path / "out"
    # The teacher scores are already cached, so the run goes straight to training: 2 epochs x 24 steps.
    config = {**workspace["distill"], "out": str(out), "teacher_cache": str(reference_distill["scores"])}
    path = write_config(tmp_path / "distill.yaml", config)
    target = random.Random(SEED + 2).randint(2, 40)

    def reached() -> bool:
        try:
            return json.loads((out / "last" / "state.json").read_text())["step"] >= target
        except (FileNotFoundError, ValueError, KeyError):  # not yet written, or between the swap's renames
            return False

    kill_when(["distill", "--config", str(path), "--quiet"], reached, tmp_path / "log")
    recover_checkpoint(out / "last")
    step = json.loads((out / "last" / "state.json").read_text())["step"]
    assert target <= step < 48, f"seed {SEED}: killed at step {step}"

    rerun = run_dcd("distill", "--config", str(path), "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert_same_run(out, reference_distill["out"])


# ----------------------------------------------------------------------------- kills at the worst moment, in-process


def test_kill_in_the_middle_of_a_shard_write_leaves_no_shard(workspace, tmp_path, monkeypatch):
    """The writer dies after writing half a shard: no file under the shard's name, and the rerun completes it.

    Fails if shards were written in place instead of through a temporary file and a rename."""
    real_save = features_module.save_file
    calls = []

    def half_then_die(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 3:
            real_save(tensors, filename, *args, **kwargs)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt  # the process is gone mid-write
        real_save(tensors, filename, *args, **kwargs)

    args = [*workspace["feature_args"], "--shard-size", "8", "--out", str(tmp_path / "cache")]
    monkeypatch.setattr(features_module, "save_file", half_then_die)
    with like_a_fresh_process():
        assert main(["features", *args]) == 130  # the CLI's "interrupted; rerun to resume"
    monkeypatch.setattr(features_module, "save_file", real_save)
    assert shard_count(tmp_path / "cache") == 2 and not temporary_files(tmp_path / "cache")
    for shard in (tmp_path / "cache").rglob("shard-*.safetensors"):
        load_file(str(shard))
    (unfinished,) = [p.parent for p in (tmp_path / "cache").rglob("manifest.json")]
    with pytest.raises(CorruptFileError, match="incomplete"):  # two shards on disk, but not the whole split
        load_feature_cache(unfinished)
    in_process("features", *args)
    assert_same_bytes(tmp_path / "cache", workspace["root"] / "cache", "shard-*.safetensors")


def test_kill_in_the_middle_of_a_round_write_leaves_no_round(tmp_path, monkeypatch):
    """The same for the teacher-score cache: a round file is whole or absent."""
    from test_teacher_cache import SETTINGS, CountingBuilder, assert_same

    real_save = teacher_cache_module.save_file

    def half_then_die(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)
        Path(filename).write_bytes(Path(filename).read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_cache_module, "save_file", half_then_die)
    cache = teacher_cache_module.TeacherScoreCache(tmp_path / "scores", **SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build(0, CountingBuilder())
    monkeypatch.setattr(teacher_cache_module, "save_file", real_save)
    assert not round_files(tmp_path / "scores") and not temporary_files(tmp_path / "scores")
    build = CountingBuilder()
    rounds = teacher_cache_module.TeacherScoreCache(tmp_path / "scores", **SETTINGS).get_or_build(0, build)
    assert len(build.calls) == 2
    assert_same(rounds["image_to_text"], build(0, "image_to_text"))


def test_kill_between_the_files_of_a_checkpoint_resumes_bit_identically(tmp_path, monkeypatch):
    """Killed after a checkpoint's weights and optimizer are written but before its state.json.

    Fails if the checkpoint files were replaced one by one in ``last/`` (the resumed run would start from the new
    weights with the old step count)."""
    config = TrainConfig(epochs=2, lr=3e-3, warmup_fraction=0.2, checkpoint_every=1, log_every=1)
    model_a, *_ = _fit_dual(tmp_path / "a", config)
    real_write = train_module.write_json_atomic
    states_written = []

    def die_before_the_fifth_state(path, payload, *args, **kwargs):
        if Path(path).name == "state.json":
            states_written.append(path)
            if len(states_written) == 5:
                raise KeyboardInterrupt
        return real_write(path, payload, *args, **kwargs)

    monkeypatch.setattr(train_module, "write_json_atomic", die_before_the_fifth_state)
    with pytest.raises(KeyboardInterrupt):
        _fit_dual(tmp_path / "b", config)
    monkeypatch.setattr(train_module, "write_json_atomic", real_write)
    assert json.loads((tmp_path / "b" / "last" / "state.json").read_text())["step"] == 4
    model_b, *_ = _fit_dual(tmp_path / "b", config, init_seed=99)
    assert_states_equal(state_of(model_b), state_of(model_a))


@pytest.mark.parametrize(
    ("present", "expected_step"),
    [
        ({"last": 3}, 3),
        ({"last.next": 4, "last.prev": 3}, 4),  # killed between the two renames: the newer one wins
        ({"last.prev": 3}, 3),
        ({"last": 3, "last.next": None}, 3),  # a half-written staging folder is ignored
        ({"last.next": None}, None),  # the first checkpoint never finished: start afresh
    ],
)
def test_recover_checkpoint_finds_the_newest_complete_one(tmp_path, present, expected_step):
    for name, step in present.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"weights")
        if step is not None:
            (tmp_path / name / "state.json").write_text(json.dumps({"step": step}))
    recover_checkpoint(tmp_path / "last")
    state = tmp_path / "last" / "state.json"
    assert (json.loads(state.read_text())["step"] if state.exists() else None) == expected_step


# ----------------------------------------------------------------------------- disk full


class FileSizeLimit:
    """Writes past ``limit`` bytes fail with EFBIG (as on a full disk), enforced by the kernel; undone on exit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __enter__(self) -> FileSizeLimit:
        self.saved_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.saved_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved_limit[1]))
        return self

    def __exit__(self, *exc) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved_limit)
        signal.signal(signal.SIGXFSZ, self.saved_handler)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    """The disk fills while a checkpoint is written (the weights fit, the optimizer state does not): a clear
    OutputError, ``last/`` byte-identical to the previous checkpoint, and a resume equal to an uninterrupted run.

    Fails if the checkpoint files were replaced one by one in ``last/`` (new weights beside the old state)."""
    config = TrainConfig(epochs=2, lr=3e-3, warmup_fraction=0.2, checkpoint_every=1, log_every=1000)
    model_a, *_ = _fit_dual(tmp_path / "a", config)
    last = tmp_path / "b" / "last"
    task = DualTask(dropout=0.3)
    model = task.build(0)
    snapshot: dict[str, bytes] = {}
    calls: list[torch.Tensor] = []
    disk = contextlib.ExitStack()

    def step(wrapped, rows):
        calls.append(rows)
        if len(calls) == 5:  # steps 1-4 are checkpointed; the disk fills before step 5's checkpoint
            snapshot.update({p.name: p.read_bytes() for p in last.iterdir()})
            weights = len(snapshot["model.safetensors"])
            assert (
                len(snapshot["optimizer.pt"]) > weights + 256
            )  # so the weights fit and the optimizer does not
            disk.enter_context(FileSizeLimit(weights + 256))
        return task.step(wrapped, rows)

    trainer = train_module.Trainer(
        model, [{"params": list(model.parameters())}], config, tmp_path / "b", False
    )
    with disk, pytest.raises(OutputError, match=r"optimizer\.pt: cannot write \(.*\); the file there before"):
        trainer.fit(task.batches, step, task.validate)
    assert {p.name: p.read_bytes() for p in last.iterdir()} == snapshot  # the earlier checkpoint, untouched
    assert not temporary_files(tmp_path / "b")
    model_b, *_ = _fit_dual(tmp_path / "b", config, init_seed=99)
    assert_states_equal(state_of(model_b), state_of(model_a))


def _limit_file_size(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` that gives the child process a file-size limit (a full disk)."""

    def apply() -> None:  # runs in the child between fork and exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


@pytest.mark.slow
def test_disk_full_during_feature_caching_is_a_clear_error_and_keeps_earlier_results(workspace, tmp_path):
    """`dcd features` adds a text view to a cache whose image view is done; the disk fills at the first text
    shard: exit 2 naming the shard, the image view byte-identical, no temporary files; then the rerun completes."""
    args = workspace["feature_args"]  # --data D --image-encoder V --text-encoder T --quiet
    image_only = [*args[:4], "--quiet"]
    out = tmp_path / "cache"
    in_process("features", *image_only, "--out", str(out), "--shard-size", "8")
    before = {name: path.read_bytes() for name, path in files_under(out).items()}
    result = run_dcd(
        "features", *args, "--out", str(out), "--shard-size", "8", preexec_fn=_limit_file_size(6000)
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "File too large" in result.stderr
    assert "shard-00000.safetensors" in result.stderr and "text-hf" in result.stderr
    assert {name: files_under(out)[name].read_bytes() for name in before} == before
    assert not temporary_files(out)
    assert run_dcd("features", *args, "--out", str(out), "--shard-size", "8").returncode == 0
    assert_same_bytes(out, workspace["root"] / "cache", "shard-*.safetensors")


# ----------------------------------------------------------------------------- unwritable output folders


def chmod_stops_writes(tmp_path: Path) -> bool:
    """Whether permission bits stop this process from writing (False for root)."""
    folder = tmp_path / "probe"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "x").write_text("x")
    except PermissionError:
        return True
    finally:
        folder.chmod(0o755)
    return False  # root (or CAP_DAC_OVERRIDE): permission bits do not apply


def unwritable_folders(tmp_path: Path) -> list[Path]:
    """A path below a regular file (ENOTDIR for everyone), and a chmod 0o555 folder where that stops writes."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    folders = [blocker / "out"]
    if chmod_stops_writes(tmp_path):
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        folders.append(locked / "out")
    return folders


def test_features_into_an_unwritable_folder_is_a_clear_error(workspace, tmp_path, capsys):
    for out in unwritable_folders(tmp_path):
        err = cli_error(capsys, "features", *workspace["feature_args"], "--out", str(out))
        assert str(out) in err


def test_training_into_an_unwritable_folder_is_a_clear_error(workspace, dual_run, tmp_path, capsys):
    for out in unwritable_folders(tmp_path):
        err = cli_error(capsys, "train-dual", "--config", str(dual_run), "--set", f"out={out}", "--quiet")
        assert str(out) in err


def test_index_into_an_unwritable_folder_is_a_clear_error(tmp_path, capsys, tiny_search):
    tiny = tiny_search
    for out in unwritable_folders(tmp_path):
        args = ["index", "build", "--model", str(tiny.dual), "--data", str(tiny.data), "--out", str(out)]
        assert str(out) in cli_error(capsys, *args, "--quiet")


# ----------------------------------------------------------------------------- corrupt files through the CLI


def truncate(path: Path) -> Path:
    """Cut a file to half its size (an interrupted copy, a full disk at write time)."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def flip_middle(path: Path) -> Path:
    """Invert one byte in the middle of a file (a bad sector, a flipped bit)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


CHECKPOINT_DAMAGE = {
    "model-truncated": ("last/model.safetensors", truncate),
    "model-header": ("last/model.safetensors", lambda p: p.write_bytes(b"\xff" * 8 + p.read_bytes()[8:])),
    "optimizer-truncated": ("last/optimizer.pt", truncate),
    "optimizer-flipped": ("last/optimizer.pt", flip_middle),  # torch.load itself would not notice
    "rng-garbage": ("last/rng.safetensors", lambda p: p.write_bytes(b"garbage")),
    "state-truncated": ("last/state.json", truncate),
    "state-a-list": ("last/state.json", lambda p: p.write_text("[]")),
    "state-wrong-types": (
        "last/state.json",
        lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "epoch": "two", "batch": None})),
    ),
}


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGE))
def test_corrupt_checkpoint_is_named(dual_run, tmp_path, capsys, damage):
    name, corrupt = CHECKPOINT_DAMAGE[damage]
    config = copy_run(dual_run, tmp_path / "run")
    corrupt(tmp_path / "run" / name)
    err = cli_error(capsys, "train-dual", "--config", str(config), "--quiet")
    assert str(tmp_path / "run" / "last") in err


FEATURE_DAMAGE = {
    "shard-truncated": ("shard", truncate),
    "shard-flipped-header": ("shard", lambda p: p.write_bytes(b"\x10\x00" + p.read_bytes()[2:])),
    "shard-empty": ("shard", lambda p: p.write_bytes(b"")),
    "shard-flipped-data": ("shard", flip_middle),  # safetensors itself would not notice
    "manifest-truncated": ("manifest", truncate),
    "manifest-not-utf8": ("manifest", lambda p: p.write_bytes(b"\xff\xfe{}")),
    "manifest-a-list": ("manifest", lambda p: p.write_text("[]")),
    "manifest-empty-object": ("manifest", lambda p: p.write_text("{}")),
    "manifest-wrong-types": (
        "manifest",
        lambda p: p.write_text(
            json.dumps({**json.loads(p.read_text()), "num_items": "many", "shard_size": 0})
        ),
    ),
}


@pytest.mark.parametrize("damage", sorted(FEATURE_DAMAGE))
def test_corrupt_feature_cache_is_named(workspace, dual_run, tmp_path, capsys, damage):
    which, corrupt = FEATURE_DAMAGE[damage]
    cache = shutil.copytree(workspace["root"] / "cache", tmp_path / "cache")
    view = next(p for p in cache.iterdir() if p.name.startswith("image-")) / "train"
    target = view / ("shard-00001.safetensors" if which == "shard" else "manifest.json")
    corrupt(target)
    err = cli_error(
        capsys, "train-dual", "--config", str(dual_run), "--set", f"features={cache}",
        "--set", f"out={tmp_path / 'run'}", "--quiet",
    )  # fmt: skip
    assert str(target) in err
    if which == "manifest":  # `dcd features` reading it back to resume says the same
        assert str(target) in cli_error(capsys, "features", *workspace["feature_args"], "--out", str(cache))


ROUND_DAMAGE = {
    "round-truncated": ("round-0000-text_to_image.safetensors", truncate),
    "round-flipped": ("round-0000-image_to_text.safetensors", flip_middle),
    "round-missing-tensor": (
        "round-0000-image_to_text.safetensors",
        lambda p: save_file({k: v for k, v in load_file(str(p)).items() if k != "teacher_logits"}, str(p)),
    ),
    "manifest-truncated": ("manifest.json", truncate),
    "manifest-a-list": ("manifest.json", lambda p: p.write_text("[1]")),
}


@pytest.fixture(scope="module")
def small_distill(workspace, tmp_path_factory) -> Path:
    """A short `dcd distill` in this process (1 round, 1 epoch of 4 steps): a teacher-score cache to damage."""
    root = tmp_path_factory.mktemp("small_distill")
    config = {
        **workspace["distill"],
        "rounds": 1,
        "out": str(root / "out"),
        "teacher_cache": str(root / "scores"),
        "train": {"epochs": 1, "lr": 0.01, "max_batches_per_epoch": 4},
    }
    path = write_config(root / "distill.yaml", config)
    in_process("distill", "--config", str(path), "--quiet")
    return path


@pytest.mark.parametrize("damage", sorted(ROUND_DAMAGE))
def test_corrupt_teacher_score_cache_is_named(small_distill, tmp_path, capsys, damage):
    name, corrupt = ROUND_DAMAGE[damage]
    scores = shutil.copytree(yaml.safe_load(small_distill.read_text())["teacher_cache"], tmp_path / "scores")
    (target,) = scores.rglob(name)
    corrupt(target)
    err = cli_error(
        capsys, "distill", "--config", str(small_distill), "--set", f"teacher_cache={scores}",
        "--set", f"out={tmp_path / 'out'}", "--quiet",
    )  # fmt: skip
    assert str(target) in err


INDEX_DAMAGE = {
    "faiss-truncated": ("vectors.faiss", truncate),
    "faiss-flipped": ("vectors.faiss", flip_middle),
    "faiss-missing": ("vectors.faiss", lambda p: p.unlink()),
    "metadata-truncated": ("index.json", truncate),
    "metadata-a-list": ("index.json", lambda p: p.write_text("[]")),
    "gallery-truncated": ("gallery.json", truncate),
    "gallery-wrong-types": (
        "gallery.json",
        lambda p: p.write_text(
            json.dumps({**json.loads(p.read_text()), "image_ids": 5, "image_captions": "x"})
        ),
    ),
    "gallery-bad-row": (
        "gallery.json",
        lambda p: p.write_text(
            json.dumps(
                {
                    **json.loads(p.read_text()),
                    "side": "captions",
                    "item_texts": ["a"],
                    "item_images": ["zero"],
                }
            )
        ),
    ),
}


@pytest.mark.parametrize("damage", sorted(INDEX_DAMAGE))
def test_corrupt_index_is_named(tmp_path, capsys, damage, tiny_index):
    name, corrupt = INDEX_DAMAGE[damage]
    index = shutil.copytree(tiny_index("images"), tmp_path / "index")
    corrupt(index / name)
    assert str(index / name) in cli_error(capsys, "search", "--index", str(index), "a red square")


EMBEDDING_DAMAGE = {
    "manifest-truncated": ("embeddings/manifest.json", truncate),
    "manifest-a-list": ("embeddings/manifest.json", lambda p: p.write_text("[]")),
    "manifest-no-gallery": (
        "embeddings/manifest.json",
        lambda p: p.write_text(
            json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "gallery"})
        ),
    ),
    "vectors-truncated": ("vectors.safetensors", truncate),
}


@pytest.mark.parametrize("damage", sorted(EMBEDDING_DAMAGE))
def test_corrupt_partial_index_build_is_named(tmp_path, capsys, damage, tiny_search, tiny_index):
    """A resumed `dcd index build` / `dcd index merge` reading back its own manifest or vectors."""
    tiny = tiny_search
    name, corrupt = EMBEDDING_DAMAGE[damage]
    build = [
        "index",
        "build",
        "--model",
        str(tiny.dual),
        "--data",
        str(tiny.data),
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    if name.startswith("embeddings"):
        assert (
            main([*build, "--shard", "0/2", "--shard-size", "4"]) == 0
        )  # a partial build: shards + manifest
    else:
        shutil.copytree(tiny_index("images"), tmp_path, dirs_exist_ok=True)
    corrupt(tmp_path / name)
    assert str(tmp_path / name) in cli_error(capsys, *build, "--shard-size", "4")
    if name.startswith("embeddings"):
        assert str(tmp_path / name) in cli_error(capsys, "index", "merge", "--out", str(tmp_path))


def test_corrupt_model_folder_is_named(dual_run, workspace, tmp_path, capsys):
    """A trained model's weights damaged after training: `dcd eval` names the file."""
    model = shutil.copytree(Path(yaml.safe_load(dual_run.read_text())["out"]) / "best", tmp_path / "model")
    truncate(model / "model.safetensors")
    err = cli_error(
        capsys, "eval", "--model", str(model), "--data", str(workspace["data"]),
        "--features", str(workspace["root"] / "cache"), "--out", str(tmp_path / "e.json"), "--quiet",
    )  # fmt: skip
    assert str(model / "model.safetensors") in err


@pytest.mark.slow
def test_a_corrupt_file_in_a_real_process_prints_one_line_and_exits_2(tmp_path, tiny_index):
    """The same through a fresh `python -m dcd_itr.cli` process: its real stderr holds no traceback."""
    index = shutil.copytree(tiny_index("images"), tmp_path / "index")
    truncate(index / "vectors.faiss")
    result = run_dcd("search", "--index", str(index), "a red square")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(index / "vectors.faiss") in result.stderr
    assert result.stderr.strip().startswith("dcd search: error:")


# ----------------------------------------------------------------------------- the service under load (small)


def test_load_summary_and_loopback_guard():
    """Percentiles against hand-computed values; a load test refuses any host but loopback."""
    from collections import Counter

    from dcd_itr.speed.service_load import LoadResult, check_loopback

    result = LoadResult(
        seconds=2.0,
        latencies_ms=[float(v) for v in range(1, 101)],
        statuses=Counter({200: 98, 503: 1, "ReadTimeout": 1}),
    )
    summary = result.summary()
    assert summary["requests"] == 100 and summary["errors"] == 2 and summary["throughput_rps"] == 50.0
    assert (
        summary["latency_ms_p50"] == 50.5
        and summary["latency_ms_p99"] == 99.01
        and summary["latency_ms_max"] == 100
    )
    check_loopback("http://127.0.0.1:8000")
    for url in ("http://10.0.0.7:8000", "http://example.com", "http://0.0.0.0:80"):
        with pytest.raises(ValueError, match="loopback only"):
            check_loopback(url)


@pytest.mark.slow
def test_served_index_under_concurrent_load_answers_everything(tmp_path):
    """`dcd serve` in its own process, 8 clients for 4 s on loopback: no failed request, memory within bounds.

    The full-size figures (100K vectors, 20 clients, 30 s) come from ``benchmarks/load.py``."""
    pytest.importorskip("uvicorn")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import load as load_benchmark
    finally:
        sys.path.pop(0)
    from dcd_itr.speed.service_load import rss_bytes, run_load, synthetic_queries
    from dcd_itr.speed.tiny_model import build_synthetic_index

    index = build_synthetic_index(tmp_path, num_vectors=5000, embed_dim=32)
    port = load_benchmark.free_port()
    server = load_benchmark.start_server(index, port, tmp_path / "server.log")
    try:
        base_url = f"http://127.0.0.1:{port}"
        run_load(base_url, synthetic_queries(16), clients=2, seconds=5, max_requests=30)  # warm-up
        before = rss_bytes(server.pid)
        result = run_load(base_url, synthetic_queries(64), clients=8, seconds=4, max_requests=2000)
        after = rss_bytes(server.pid)
    finally:
        load_benchmark.stop_server(server)
    assert result.requests > 8 and result.errors == 0, result.statuses
    assert result.requests <= 2000 and result.seconds < 4 + 30  # both bounds hold
    assert (after - before) / 2**20 < 64, (before, after)
