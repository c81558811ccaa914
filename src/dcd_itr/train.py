"""The training loop shared by the teacher and the students.

AdamW with parameter groups (each its own learning rate), linear warm-up then linear decay to zero, gradient
accumulation, gradient clipping, bf16 autocast on CUDA, validation each epoch with the best checkpoint kept by
RSUM, and checkpoints that resume *exactly*: the data order of an epoch is a function of (seed, epoch), and the
model, optimizer, schedule and RNG states are saved every ``checkpoint_every`` steps, so a killed run continues
from its last checkpoint with the same batches and the same dropout masks.

The loop knows nothing about DCD: a task supplies ``batches(epoch)`` (a list of batches, deterministic for the
epoch), ``step(batch) -> dict of loss terms`` (the loop backpropagates ``terms["loss"]``), and ``validate() ->
metrics`` (with ``"rsum"``). Under ``torchrun`` each rank takes every ``world_size``-th batch and gradients are
averaged by DistributedDataParallel (synchronised once per optimizer step, not per micro-batch); every rank
takes the same number of batches (the last ``len % world_size`` batches of an epoch are dropped), so no rank
waits on a collective the others never reach. Only rank 0 writes.

On-disk layout of ``out_dir``::

    config.yaml            the resolved run config (written by the caller)
    metrics.jsonl          one line per logged step and per validation
    last/                  model.safetensors, optimizer.pt (tensors only, loaded with weights_only=True),
                           rng.safetensors, state.json (epoch, batch, step, best_rsum or null, best_epoch,
                           history, metrics_bytes: the size of metrics.jsonl at the checkpoint, so a resumed
                           run drops the lines of the steps it redoes, checksums: the sha256 of the other three
                           files, checked on resume) — the resume point
    last.next/, last.prev/ only while a checkpoint is being swapped in (see _save_checkpoint)
    best/                  model.safetensors + metrics.json of the best validation so far
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from dcd_itr.distributed import distributed_context
from dcd_itr.errors import CorruptFileError
from dcd_itr.io_utils import atomic_path, file_sha256, load_checked, with_checksum, write_json_atomic
from dcd_itr.models.registry import load_model_weights


@dataclass
class TrainConfig:
    epochs: int = 10  # the reference recipe's 10 epochs
    lr: float = 1e-4  # base learning rate of the parameter groups that do not set their own
    weight_decay: float = 0.01  # reference AdamW setting
    betas: tuple[float, float] = (0.9, 0.98)  # reference AdamW setting
    eps: float = 1e-8  # reference AdamW setting
    warmup_fraction: float = 0.1  # 10% linear warm-up, then linear decay to zero (reference schedule)
    grad_accumulation: int = 1  # micro-batches per optimizer step
    clip_norm: float | None = 1.0  # gradient clipping keeps early DCD steps stable
    precision: str = "fp32"  # "bf16" autocasts on CUDA; CPU runs stay fp32
    seed: int = 0
    checkpoint_every: int = 50  # optimizer steps between resumable checkpoints
    log_every: int = 10  # optimizer steps between metrics.jsonl lines
    device: str = "cpu"
    max_batches_per_epoch: int | None = (
        None  # cap an epoch's micro-batches per rank (CPU budgets); None = all
    )


@dataclass
class TrainResult:
    best_metrics: dict[str, float]
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)


def linear_warmup_decay(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Multiplier for step s: linear 0 -> 1 over the warm-up, then linear 1 -> 0 at ``total_steps``."""
    warmup = max(1, int(round(warmup_fraction * total_steps)))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return multiplier


def _staging_folders(folder: Path) -> tuple[Path, Path]:
    """(``last.next``, ``last.prev``): where a new checkpoint is written, and where the old one waits."""
    return folder.with_name(f"{folder.name}.next"), folder.with_name(f"{folder.name}.prev")


def _save_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler, state: dict) -> None:
    """Write every file into ``last.next/`` (state.json last), then swap it in: ``last`` -> ``last.prev``,
    ``last.next`` -> ``last``, delete ``last.prev``. Overwriting ``last/`` file by file would let a kill (or a
    full disk) leave the weights of one step beside the state of another; a swap leaves one complete
    checkpoint at any instant (:func:`recover_checkpoint` finds it if the kill fell between the two renames)."""
    staging, previous = _staging_folders(folder)
    shutil.rmtree(staging, ignore_errors=True)  # an unfinished earlier attempt
    staging.mkdir(parents=True)
    with atomic_path(staging / "model.safetensors") as temp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(temp), metadata=with_checksum(weights))
    with atomic_path(staging / "optimizer.pt") as temp:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, temp)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    with atomic_path(staging / "rng.safetensors") as temp:
        save_file(rng, str(temp))
    checksums = {name: file_sha256(staging / name) for name in _CHECKPOINT_FILES}
    write_json_atomic(staging / "state.json", {**state, "checksums": checksums})  # last: marks it complete
    if folder.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(folder, previous)
    os.replace(staging, folder)
    shutil.rmtree(previous, ignore_errors=True)


def recover_checkpoint(folder: Path) -> None:
    """Finish a swap that a kill interrupted between its two renames: with no ``last/state.json``, the newest
    complete one of ``last.next/`` and ``last.prev/`` becomes ``last/``."""
    if (folder / "state.json").exists():
        return
    for candidate in _staging_folders(folder):  # the newer first
        if (candidate / "state.json").exists():
            with contextlib.suppress(FileNotFoundError):  # another rank finished the swap first
                os.replace(candidate, folder)
            return


_STATE_KEYS = ("epoch", "batch", "step", "best_rsum", "best_epoch", "history")
_CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "rng.safetensors")


def _load_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler) -> dict:
    state_path = folder / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(state_path, f"checkpoint state is not valid JSON ({error})") from None
    if not isinstance(state, dict) or any(key not in state for key in _STATE_KEYS):
        raise CorruptFileError(
            state_path, f"checkpoint state is not an object with the keys {list(_STATE_KEYS)}"
        )
    counters = [state[key] for key in ("epoch", "batch", "step", "best_epoch")]
    best = state["best_rsum"]
    if (
        any(type(value) is not int for value in counters)
        or not (best is None or type(best) in (int, float))
        or not isinstance(state["history"], list)
    ):
        raise CorruptFileError(state_path, "checkpoint state has fields of the wrong type")
    for name, expected in (state.get("checksums") or {}).items():
        if name in _CHECKPOINT_FILES and (folder / name).is_file() and file_sha256(folder / name) != expected:
            raise CorruptFileError(folder / name, "does not match the checksum in state.json (corrupted)")
    load_model_weights(model, folder / "model.safetensors")
    try:
        saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as error:
        raise CorruptFileError(folder / "optimizer.pt", f"cannot read optimizer state ({error})") from None
    try:
        rng, _ = load_checked(folder / "rng.safetensors")
    except Exception as error:
        raise CorruptFileError(folder / "rng.safetensors", f"cannot read RNG state ({error})") from None
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state


class Trainer:
    """Runs a task's batches through the model; see the module docstring for the contract."""

    def __init__(
        self,
        model: nn.Module,
        parameter_groups: list[dict[str, Any]],
        config: TrainConfig,
        out_dir: Path,
        progress: bool = True,
    ) -> None:
        self.model, self.config, self.out_dir, self.progress = model, config, Path(out_dir), progress
        self.rank, self.world_size = distributed_context()
        for group in parameter_groups:
            group.setdefault("lr", config.lr)
            group["base_lr"] = group["lr"]
        self.optimizer = torch.optim.AdamW(
            parameter_groups,
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
        self.initial_metrics: dict[str, float] | None = None
        self.wrapped = model
        if self.world_size > 1:
            self.wrapped = nn.parallel.DistributedDataParallel(model)

    def seed_best(self, metrics: dict[str, float]) -> None:
        """Count the model as it is now (validated by the caller) as the best so far, as epoch -1: a run whose
        epochs never beat its starting point keeps the starting point."""
        self.initial_metrics = metrics

    def _save_best(self, epoch: int, metrics: dict[str, float]) -> None:
        best = self.out_dir / "best"
        best.mkdir(parents=True, exist_ok=True)
        with atomic_path(best / "model.safetensors") as temp:
            weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            save_file(weights, str(temp), metadata=with_checksum(weights))
        write_json_atomic(best / "metrics.json", {"epoch": epoch, **metrics})

    def _metrics_bytes(self) -> int:
        path = self.out_dir / "metrics.jsonl"
        return path.stat().st_size if path.exists() else 0

    def _drop_lines_after_checkpoint(self, state: dict) -> None:
        """Cut metrics.jsonl back to its size at the checkpoint: the steps after it are redone and logged again."""
        path = self.out_dir / "metrics.jsonl"
        if self.rank == 0 and path.exists() and path.stat().st_size > state.get("metrics_bytes", 1 << 62):
            with open(path, "r+b") as stream:
                stream.truncate(state["metrics_bytes"])

    def _checkpoint(self, scheduler, state: dict) -> None:
        if self.rank == 0:
            state["metrics_bytes"] = self._metrics_bytes()
            _save_checkpoint(self.out_dir / "last", self.model, self.optimizer, scheduler, state)

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")

    def _autocast(self):
        enabled = self.config.precision == "bf16" and self.config.device.startswith("cuda")
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)

    def _rank_batches(self, epoch_batches: list[Any]) -> list[Any]:
        """This rank's share of an epoch: every ``world_size``-th batch, the same number on every rank."""
        per_rank = len(epoch_batches) // self.world_size
        if self.config.max_batches_per_epoch:
            per_rank = min(per_rank, self.config.max_batches_per_epoch)
        return epoch_batches[self.rank :: self.world_size][:per_rank]

    def _no_sync(self, last_micro_batch: bool):
        """DDP all-reduces once per optimizer step: the accumulated gradients, at its last micro-batch."""
        if self.world_size > 1 and not last_micro_batch:
            return self.wrapped.no_sync()
        return contextlib.nullcontext()

    def fit(
        self,
        batches: Callable[[int], list[Any]],
        step: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
        validate: Callable[[], dict[str, float]],
    ) -> TrainResult:
        """Train ``config.epochs`` epochs, continuing from ``out_dir/last`` when it holds a checkpoint."""
        config = self.config
        first_epoch = batches(0)
        steps_per_epoch = len(self._rank_batches(first_epoch)) // config.grad_accumulation
        if steps_per_epoch < 1:
            raise ValueError(
                f"an epoch of {len(first_epoch)} batches over {self.world_size} rank(s) is shorter than one "
                f"optimizer step (grad_accumulation={config.grad_accumulation})"
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_warmup_decay(steps_per_epoch * config.epochs, config.warmup_fraction)
        )
        torch.manual_seed(config.seed)
        state = {"epoch": 0, "batch": 0, "step": 0, "best_rsum": None, "best_epoch": -1, "history": []}
        recover_checkpoint(self.out_dir / "last")
        if (self.out_dir / "last" / "state.json").exists():
            state = _load_checkpoint(self.out_dir / "last", self.model, self.optimizer, scheduler)
            self._drop_lines_after_checkpoint(state)
            if self.progress and self.rank == 0:
                print(f"resuming {self.out_dir} at epoch {state['epoch']}, batch {state['batch']}")
        elif self.initial_metrics is not None:
            state["best_rsum"] = self.initial_metrics["rsum"]
            if self.rank == 0:
                self._save_best(-1, self.initial_metrics)
        seconds: list[float] = []
        while state["epoch"] < config.epochs:
            epoch = state["epoch"]
            epoch_batches = self._rank_batches(batches(epoch))
            usable = (
                min(steps_per_epoch, len(epoch_batches) // config.grad_accumulation)
                * config.grad_accumulation
            )
            self.model.train()
            started = time.perf_counter()
            bar = tqdm(
                total=usable,
                initial=state["batch"],
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=not self.progress or self.rank != 0,
                leave=False,
            )
            for index in range(state["batch"], usable):
                last_micro_batch = (index + 1) % config.grad_accumulation == 0
                with self._no_sync(last_micro_batch):
                    with self._autocast():
                        terms = step(self.wrapped, epoch_batches[index])
                    (terms["loss"] / config.grad_accumulation).backward()  # mean over the micro-batches
                bar.update(1)
                if not last_micro_batch:
                    continue
                if config.clip_norm:
                    nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_norm)
                lr = scheduler.get_last_lr()[0]  # the rate this step applies (logged below)
                self.optimizer.step()
                scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["batch"] = index + 1
                shown = {k: round(float(v.detach()), 4) for k, v in terms.items() if v.numel() == 1}
                bar.set_postfix(shown)
                if state["step"] % config.log_every == 0:
                    self._log({"epoch": epoch, "step": state["step"], "lr": lr, **shown})
                if state["step"] % config.checkpoint_every == 0:
                    self._checkpoint(scheduler, state)
            bar.close()
            seconds.append(time.perf_counter() - started)
            self.model.eval()
            metrics = validate()
            self.model.train()
            record = {"epoch": epoch, "validation": metrics, "epoch_seconds": seconds[-1]}
            self._log(record)
            state["history"].append(record)
            # every rank validates the same data, so every rank reaches the same verdict
            improved = state["best_rsum"] is None or metrics["rsum"] > state["best_rsum"]
            if improved:
                state["best_rsum"], state["best_epoch"] = metrics["rsum"], epoch
            if improved and self.rank == 0:
                self._save_best(epoch, metrics)
            if self.progress and self.rank == 0:
                print(
                    f"epoch {epoch + 1}: val rsum {metrics['rsum']:.1f} (best {state['best_rsum']:.1f}), "
                    f"{seconds[-1]:.1f} s"
                )
            state["epoch"], state["batch"] = epoch + 1, 0
            self._checkpoint(scheduler, state)
        if self.world_size > 1:
            dist.barrier()
        best_path = self.out_dir / "best" / "metrics.json"
        best_metrics = json.loads(best_path.read_text()) if self.rank == 0 and best_path.exists() else {}
        return TrainResult(best_metrics, state["best_epoch"], state["history"], seconds)
