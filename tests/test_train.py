"""The training loop's promises, checked on tiny models in a few steps.

Every step goes through the wrapped module's ``forward`` (what DistributedDataParallel syncs). Known answers:
the schedule against hand-computed multipliers, accumulation against one large batch, resume against an
uninterrupted run (bit for bit), the best checkpoint against a scripted validation sequence.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from dcd_itr.distill.contrastive import SymmetricInfoNCELoss
from dcd_itr.errors import CorruptFileError
from dcd_itr.interfaces import slice_features
from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.registry import load_model_weights
from dcd_itr.train import TrainConfig, Trainer, linear_warmup_decay

IMAGE_KEY = "efficientnet-lite0@128.pooled"  # DualConfig's default views
TEXT_KEY = "minilm-l6@40.pooled"


# ---------------------------------------------------------------------------------------------------------
# Tiny tasks


class DualTask:
    """A tiny dual encoder trained with InfoNCE on random "cached features": 24 pairs, batches of 4."""

    def __init__(self, dropout: float = 0.3, pairs: int = 24, batch_size: int = 4) -> None:
        data = torch.Generator().manual_seed(1234)
        self.images = {IMAGE_KEY: torch.randn(pairs, 6, generator=data)}  # (N, image_dim)
        self.texts = {TEXT_KEY: torch.randn(pairs, 5, generator=data)}  # (N, text_dim)
        self.val_images = {IMAGE_KEY: torch.randn(8, 6, generator=data)}  # (8, image_dim)
        self.val_texts = {TEXT_KEY: torch.randn(8, 5, generator=data)}  # (8, text_dim)
        self.config = DualConfig(image_dim=6, text_dim=5, embed_dim=4, hidden_dim=8, dropout=dropout)
        self.pairs, self.batch_size = pairs, batch_size
        self.loss = SymmetricInfoNCELoss()
        self.model: DualEncoderModel | None = None

    def build(self, init_seed: int = 0) -> DualEncoderModel:
        torch.manual_seed(init_seed)
        self.model = DualEncoderModel(self.config)
        return self.model

    def batches(self, epoch: int) -> list[torch.Tensor]:
        order = torch.randperm(self.pairs, generator=torch.Generator().manual_seed(100 + epoch))  # (N,)
        return list(order.split(self.batch_size))  # (batch_size,) rows each

    def step(self, wrapped: nn.Module, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        images, texts = wrapped(slice_features(self.images, rows), slice_features(self.texts, rows))
        return self.loss(self.model.similarity(images, texts))  # (B, B) logits

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """A deterministic score of the weights: minus the validation InfoNCE (eval mode, no RNG)."""
        images, texts = self.model(self.val_images, self.val_texts)  # (8, D) each
        return {"rsum": -100.0 * float(self.loss(self.model.similarity(images, texts))["loss"])}


class RegressionTask:
    """y = x W + b with a per-sample mean squared error, so one batch of 8 equals two micro-batches of 4."""

    def __init__(self) -> None:
        data = torch.Generator().manual_seed(7)
        self.inputs = torch.randn(16, 3, generator=data)  # (N, 3)
        self.targets = torch.randn(16, 2, generator=data)  # (N, 2)

    def build(self) -> nn.Linear:
        torch.manual_seed(0)
        return nn.Linear(3, 2)

    def step(self, wrapped: nn.Module, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(wrapped(self.inputs[rows]), self.targets[rows])}


def constant_validation() -> dict[str, float]:
    return {"rsum": 0.0}


def scripted_validation(
    rsums: list[float], model: nn.Module, snapshots: list[dict]
) -> Callable[[], dict[str, float]]:
    """validate() returning ``rsums`` in order, keeping a copy of the weights it was called on."""
    remaining = list(rsums)

    def validate() -> dict[str, float]:
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"rsum": remaining.pop(0)}

    return validate


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_states_equal(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------------------
# 1. Schedule


def test_linear_warmup_decay_matches_hand_computed_multipliers():
    multiplier = linear_warmup_decay(total_steps=10, warmup_fraction=0.2)  # warm-up of 2 steps
    expected = [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0]
    assert [multiplier(s) for s in range(11)] == pytest.approx(expected, abs=1e-12)
    assert multiplier(25) == 0.0  # past the end it stays at zero


def test_linear_warmup_decay_without_warmup_starts_at_full_rate():
    multiplier = linear_warmup_decay(total_steps=4, warmup_fraction=0.0)  # at least one warm-up step
    assert [multiplier(s) for s in range(5)] == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3, 0.0])


# ---------------------------------------------------------------------------------------------------------
# 2. Parameter groups


def test_parameter_groups_keep_their_own_scheduled_learning_rates(tmp_path):
    task = RegressionTask()
    model = task.build()
    config = TrainConfig(epochs=2, lr=0.01, warmup_fraction=0.2, log_every=100, checkpoint_every=100)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.05}]  # x5 for the bias
    trainer = Trainer(model, groups, config, tmp_path / "run", progress=False)
    seen: list[tuple[float, float]] = []

    def step(wrapped, rows):
        seen.append(tuple(group["lr"] for group in trainer.optimizer.param_groups))
        return task.step(wrapped, rows)

    trainer.fit(lambda epoch: list(torch.arange(16).split(3))[:5], step, constant_validation)
    multipliers = [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]  # 10 steps, warm-up 2
    assert [s[0] for s in seen] == pytest.approx([0.01 * m for m in multipliers], rel=1e-12)
    assert [s[1] for s in seen] == pytest.approx([0.05 * m for m in multipliers], rel=1e-12)


# ---------------------------------------------------------------------------------------------------------
# 3. Gradient accumulation


def _fit_regression(out_dir: Path, batch_rows: list[torch.Tensor], grad_accumulation: int):
    task = RegressionTask()
    model = task.build()
    config = TrainConfig(epochs=1, lr=0.05, grad_accumulation=grad_accumulation, clip_norm=None)
    trainer = Trainer(model, [{"params": list(model.parameters())}], config, out_dir, progress=False)
    gradients: list[list[torch.Tensor]] = []  # per optimizer step, the gradients it applied
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: gradients.append([p.grad.clone() for p in model.parameters()])
    )
    trainer.fit(lambda epoch: batch_rows, task.step, constant_validation)
    return gradients, state_of(model)


def test_two_micro_batches_of_four_equal_one_batch_of_eight(tmp_path):
    rows = torch.arange(16)
    micro_grads, micro_state = _fit_regression(tmp_path / "micro", list(rows.split(4)), grad_accumulation=2)
    full_grads, full_state = _fit_regression(tmp_path / "full", list(rows.split(8)), grad_accumulation=1)
    assert len(micro_grads) == len(full_grads) == 2  # two optimizer steps each
    for micro, full in zip(micro_grads, full_grads, strict=True):
        for micro_grad, full_grad in zip(micro, full, strict=True):
            torch.testing.assert_close(micro_grad, full_grad, atol=1e-6, rtol=0)
    for name in full_state:
        torch.testing.assert_close(micro_state[name], full_state[name], atol=1e-6, rtol=0)


def test_an_epoch_shorter_than_one_optimizer_step_is_refused(tmp_path):
    task = RegressionTask()
    model = task.build()
    config = TrainConfig(epochs=1, grad_accumulation=4)
    trainer = Trainer(model, [{"params": list(model.parameters())}], config, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="grad_accumulation"):
        trainer.fit(lambda epoch: list(torch.arange(6).split(2)), task.step, constant_validation)


def test_epochs_of_different_lengths_train_what_they_have_within_the_planned_schedule(tmp_path):
    """The schedule is planned from epoch 0's length; a shorter later epoch must not index past its end."""
    task = RegressionTask()
    model = task.build()
    config = TrainConfig(epochs=3, log_every=1, checkpoint_every=100)
    trainer = Trainer(model, [{"params": list(model.parameters())}], config, tmp_path, progress=False)
    lengths = {0: 4, 1: 2, 2: 6}  # batches per epoch; epoch 2's extra batches fall outside the schedule
    trainer.fit(
        lambda epoch: list(torch.arange(16).split(2))[: lengths[epoch]], task.step, constant_validation
    )
    steps = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "step" in r]
    assert steps == list(range(1, 4 + 2 + 4 + 1))


# ---------------------------------------------------------------------------------------------------------
# 4. Best checkpoint


def test_best_checkpoint_keeps_the_epoch_with_the_highest_rsum(tmp_path):
    task = DualTask()
    model = task.build()
    config = TrainConfig(epochs=4, checkpoint_every=100)
    trainer = Trainer(model, [{"params": list(model.parameters())}], config, tmp_path, progress=False)
    snapshots: list[dict] = []
    validate = scripted_validation([10.0, 30.0, 20.0, 30.0], model, snapshots)  # a later tie is no better
    result = trainer.fit(task.batches, task.step, validate)
    assert result.best_epoch == 1
    assert result.best_metrics == {"epoch": 1, "rsum": 30.0}
    assert json.loads((tmp_path / "best" / "metrics.json").read_text()) == {"epoch": 1, "rsum": 30.0}
    assert_states_equal(load_file(str(tmp_path / "best" / "model.safetensors")), snapshots[1])
    assert [record["validation"]["rsum"] for record in result.history] == [10.0, 30.0, 20.0, 30.0]


def test_seed_best_keeps_the_starting_model_when_no_epoch_beats_it(tmp_path):
    task = DualTask()
    model = task.build()
    start = state_of(model)
    config = TrainConfig(epochs=2, checkpoint_every=100)
    trainer = Trainer(model, [{"params": list(model.parameters())}], config, tmp_path, progress=False)
    trainer.seed_best({"rsum": 50.0, "image_to_text_R@1": 25.0})
    result = trainer.fit(task.batches, task.step, scripted_validation([40.0, 49.9], model, []))
    assert result.best_epoch == -1
    assert json.loads((tmp_path / "best" / "metrics.json").read_text()) == {
        "epoch": -1,
        "rsum": 50.0,
        "image_to_text_R@1": 25.0,
    }
    assert_states_equal(load_file(str(tmp_path / "best" / "model.safetensors")), start)
    assert not torch.equal(
        model.image_head.shortcut.weight, start["image_head.shortcut.weight"]
    )  # it trained


def test_seed_best_is_replaced_by_a_better_epoch(tmp_path):
    task = DualTask()
    model = task.build()
    trainer = Trainer(
        model, [{"params": list(model.parameters())}], TrainConfig(epochs=2), tmp_path, progress=False
    )
    trainer.seed_best({"rsum": 50.0})
    snapshots: list[dict] = []
    result = trainer.fit(task.batches, task.step, scripted_validation([40.0, 60.0], model, snapshots))
    assert result.best_epoch == 1
    assert_states_equal(load_file(str(tmp_path / "best" / "model.safetensors")), snapshots[1])


# ---------------------------------------------------------------------------------------------------------
# 5. Exact resume


def _resume_config(grad_accumulation: int, checkpoint_every: int) -> TrainConfig:
    return TrainConfig(
        epochs=3,
        lr=3e-3,
        warmup_fraction=0.2,
        grad_accumulation=grad_accumulation,
        checkpoint_every=checkpoint_every,
        log_every=1,
    )


def _fit_dual(out_dir: Path, config: TrainConfig, init_seed: int = 0, interrupt_at: int | None = None):
    """Train the dropout dual task; raise KeyboardInterrupt inside the ``interrupt_at``-th step call (0-based)."""
    task = DualTask(dropout=0.3)
    model = task.build(init_seed)
    calls = []

    def step(wrapped, rows):
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        calls.append(rows)
        return task.step(wrapped, rows)

    trainer = Trainer(model, [{"params": list(model.parameters())}], config, out_dir, progress=False)
    result = trainer.fit(task.batches, step, task.validate)
    return model, trainer, result, calls


@pytest.mark.parametrize(
    ("grad_accumulation", "checkpoint_every", "interrupt_at"),
    [
        (1, 1, 6 + 3),  # epoch 1, batch 3: resumes from the checkpoint of the step just before
        (
            2,
            2,
            6 + 5,
        ),  # epoch 1, 2nd micro-batch of step 3: the checkpoint is one step back, step 2 is redone
        (1, 4, 6 + 1),  # epoch 1, batch 1: the checkpoint is the end of epoch 0 (after its validation)
    ],
)
def test_interrupted_run_resumes_bit_identically(tmp_path, grad_accumulation, checkpoint_every, interrupt_at):
    config = _resume_config(grad_accumulation, checkpoint_every)
    model_a, trainer_a, result_a, calls_a = _fit_dual(tmp_path / "a", config)

    with pytest.raises(KeyboardInterrupt):
        _fit_dual(tmp_path / "b", config, interrupt_at=interrupt_at)
    assert (tmp_path / "b" / "last" / "state.json").exists()
    # A fresh process would build the model from another seed: the checkpoint must overwrite all of it.
    model_b, trainer_b, result_b, calls_b = _fit_dual(tmp_path / "b", config, init_seed=99)

    assert_states_equal(state_of(model_b), state_of(model_a))
    assert_states_equal(
        load_file(str(tmp_path / "b" / "best" / "model.safetensors")),
        load_file(str(tmp_path / "a" / "best" / "model.safetensors")),
    )
    optimizer_a, optimizer_b = trainer_a.optimizer.state_dict(), trainer_b.optimizer.state_dict()
    for key, moments in optimizer_a["state"].items():
        for name, value in moments.items():
            assert torch.equal(optimizer_b["state"][key][name], value), (key, name)
    # The resumed run saw exactly the batches the uninterrupted one saw after the checkpoint.
    assert all(torch.equal(a, b) for a, b in zip(calls_a[-len(calls_b) :], calls_b, strict=True))
    assert result_b.best_epoch == result_a.best_epoch
    assert [r["validation"] for r in result_b.history] == [r["validation"] for r in result_a.history]

    def without_timing(records):
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in records]

    assert without_timing(read_jsonl(tmp_path / "b" / "metrics.jsonl")) == without_timing(
        read_jsonl(tmp_path / "a" / "metrics.jsonl")
    )  # no duplicate lines from the steps redone after the checkpoint


def test_dropout_makes_the_resume_test_sensitive_to_the_rng(tmp_path):
    """Guard for the test above: two runs that differ only in the seed end with different weights."""
    config = _resume_config(1, 100)
    config.epochs = 1
    model_a, *_ = _fit_dual(tmp_path / "a", config)
    config.seed = 1
    model_b, *_ = _fit_dual(tmp_path / "b", config)
    assert not torch.equal(model_a.image_head.mlp[0].weight, model_b.image_head.mlp[0].weight)


def test_a_finished_run_does_not_train_again(tmp_path):
    config = _resume_config(1, 100)
    model_a, *_ = _fit_dual(tmp_path, config)
    model_b, _, result, calls = _fit_dual(tmp_path, config, init_seed=5)
    assert calls == [] and result.history and len(result.history) == 3
    assert_states_equal(state_of(model_b), state_of(model_a))


# ---------------------------------------------------------------------------------------------------------
# 6. Corrupt checkpoints


def _trained_run(out_dir: Path) -> None:
    _fit_dual(out_dir, TrainConfig(epochs=1, checkpoint_every=100))


def test_truncated_checkpoint_weights_raise_corrupt_file_error_naming_the_file(tmp_path):
    _trained_run(tmp_path)
    weights = tmp_path / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    config = TrainConfig(epochs=2, checkpoint_every=100)
    with pytest.raises(CorruptFileError) as caught:
        _fit_dual(tmp_path, config)
    assert caught.value.path == str(weights)
    assert "model.safetensors" in str(caught.value)


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]", b'{"epoch": 1}'])
def test_garbage_checkpoint_state_raises_corrupt_file_error(tmp_path, garbage):
    _trained_run(tmp_path)
    state = tmp_path / "last" / "state.json"
    state.write_bytes(garbage)
    with pytest.raises(CorruptFileError) as caught:
        _fit_dual(tmp_path, TrainConfig(epochs=2, checkpoint_every=100))
    assert caught.value.path == str(state)


def test_truncated_optimizer_state_raises_corrupt_file_error(tmp_path):
    _trained_run(tmp_path)
    optimizer = tmp_path / "last" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:50])
    with pytest.raises(CorruptFileError, match="optimizer"):
        _fit_dual(tmp_path, TrainConfig(epochs=2, checkpoint_every=100))


def test_load_model_weights_names_a_file_that_does_not_fit(tmp_path):
    _trained_run(tmp_path)
    with pytest.raises(CorruptFileError, match="do not fit"):
        load_model_weights(nn.Linear(3, 2), tmp_path / "best" / "model.safetensors")


def test_checkpoint_state_is_strict_json(tmp_path):
    """state.json is a documented on-disk format: no NaN/Infinity extensions, even before any validation."""
    with pytest.raises(KeyboardInterrupt):
        _fit_dual(tmp_path, TrainConfig(epochs=1, checkpoint_every=1), interrupt_at=2)

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    state = json.loads((tmp_path / "last" / "state.json").read_text(), parse_constant=refuse)
    assert state["epoch"] == 0 and state["batch"] == 2 and state["step"] == 2


# ---------------------------------------------------------------------------------------------------------
# 7. metrics.jsonl


def test_metrics_jsonl_holds_the_logged_steps_and_the_validations(tmp_path):
    task = DualTask(dropout=0.0, pairs=16)  # 4 batches of 4 per epoch
    model = task.build()
    config = TrainConfig(epochs=2, lr=0.01, warmup_fraction=0.25, log_every=2, checkpoint_every=100)
    trainer = Trainer(model, [{"params": list(model.parameters())}], config, tmp_path, progress=False)
    used_lr: list[float] = []

    def step(wrapped, rows):
        used_lr.append(trainer.optimizer.param_groups[0]["lr"])
        return task.step(wrapped, rows)

    trainer.fit(task.batches, step, task.validate)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    kinds = [("validation" if "validation" in r else "step", r["epoch"], r.get("step")) for r in records]
    assert kinds == [
        ("step", 0, 2),
        ("step", 0, 4),
        ("validation", 0, None),
        ("step", 1, 6),
        ("step", 1, 8),
        ("validation", 1, None),
    ]
    step_records = [r for r in records if "step" in r]
    # the learning rate a line shows is the one its step used: 8 steps, warm-up 2 -> multipliers by hand
    assert [r["lr"] for r in step_records] == pytest.approx([0.01, 0.01 * 5 / 6, 0.01 * 3 / 6, 0.01 / 6])
    assert [r["lr"] for r in step_records] == pytest.approx(used_lr[1::2])
    assert all({"loss", "image_to_text", "text_to_image"} <= r.keys() for r in step_records)
    assert all(isinstance(r["loss"], float) and r["loss"] > 0 for r in step_records)
    validations = [r for r in records if "validation" in r]
    assert all(set(r) == {"epoch", "validation", "epoch_seconds"} for r in validations)
    assert validations[-1]["validation"] == task.validate()
