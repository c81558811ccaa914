"""Two CPU ranks (gloo) train exactly like one process with gradient accumulation, and only rank 0 writes.

The Trainer gives rank r every world_size-th batch of an epoch, and DistributedDataParallel averages the
ranks' gradients. So two ranks with grad_accumulation=2 over micro-batches [b0, ..., b7] (rank 0: b0, b2, b4,
b6; rank 1: b1, b3, b5, b7) apply at their first step the mean of the gradients of b0..b3 — what one process
with grad_accumulation=4 applies. With a per-micro-batch mean loss and no dropout the two runs must agree.
Accumulating on each rank exercises DDP's ``no_sync``; the epoch has 9 batches, an odd count, and every rank
must still take the same number (otherwise one rank waits forever on a collective the other never reaches).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from conftest import spawn_ranks
from dcd_itr.distill.contrastive import SymmetricInfoNCELoss
from dcd_itr.distributed import distributed_context
from dcd_itr.interfaces import slice_features
from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.train import TrainConfig, Trainer

WORLD_SIZE = 2
JOIN_TIMEOUT_S = (
    120  # start-up (imports, gloo rendezvous) takes a few seconds; a hang fails instead of waiting
)
IMAGE_KEY = "efficientnet-lite0@128.pooled"  # DualConfig's default views
TEXT_KEY = "minilm-l6@40.pooled"


def _train(out_dir: Path, grad_accumulation: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train the tiny dual encoder; return its final weights and the gradients of every optimizer step."""
    data = torch.Generator().manual_seed(3)
    images = {IMAGE_KEY: torch.randn(36, 6, generator=data)}  # (N, image_dim)
    texts = {TEXT_KEY: torch.randn(36, 5, generator=data)}  # (N, text_dim)
    torch.manual_seed(0)
    model = DualEncoderModel(DualConfig(image_dim=6, text_dim=5, embed_dim=4, hidden_dim=8, dropout=0.0))
    loss = SymmetricInfoNCELoss()

    def batches(epoch: int) -> list[torch.Tensor]:
        order = torch.randperm(36, generator=torch.Generator().manual_seed(epoch))  # (N,)
        return list(order.split(4))  # 9 batches of (4,) rows

    def step(wrapped, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        image_embedding, text_embedding = wrapped(slice_features(images, rows), slice_features(texts, rows))
        return loss(model.similarity(image_embedding, text_embedding))  # (B, B) logits

    @torch.no_grad()
    def validate() -> dict[str, float]:
        image_embedding, text_embedding = model(images, texts)  # (N, D) each
        return {"rsum": float(model.similarity(image_embedding, text_embedding).diagonal().mean())}

    config = TrainConfig(
        epochs=2, lr=1e-2, grad_accumulation=grad_accumulation, checkpoint_every=1, log_every=1
    )
    trainer = Trainer(model, [{"params": list(model.parameters())}], config, out_dir, progress=False)
    gradients: dict[str, torch.Tensor] = {}
    names = {id(p): name for name, p in model.named_parameters()}

    def keep_gradients(optimizer, args, kwargs) -> None:
        step_index = len(gradients) // len(names)
        for parameter in model.parameters():
            gradients[f"{step_index}.{names[id(parameter)]}"] = parameter.grad.detach().clone()

    trainer.optimizer.register_step_pre_hook(keep_gradients)
    trainer.fit(batches, step, validate)
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return weights, gradients


def _rank_main(rank: int, port: int, out_dir: str, result_dir: str) -> None:
    """One rank: join the gloo group, train, save its weights and gradients under ``result_dir``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two ranks share the test machine's cores
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        assert distributed_context() == (rank, WORLD_SIZE)
        weights, gradients = _train(Path(out_dir), grad_accumulation=2)
        save_file(weights, str(Path(result_dir) / f"weights{rank}.safetensors"))
        save_file(gradients, str(Path(result_dir) / f"gradients{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def _files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_with_gradient_accumulation(tmp_path):
    single_weights, single_gradients = _train(tmp_path / "single", grad_accumulation=4)
    result_dir = tmp_path / "results"
    result_dir.mkdir()
    spawn_ranks(_rank_main, (str(tmp_path / "ddp"), str(result_dir)), WORLD_SIZE, JOIN_TIMEOUT_S)

    assert len(single_gradients) == 2 * 2 * len(single_weights)  # 2 epochs x 2 steps, every parameter
    for rank in range(WORLD_SIZE):
        gradients = load_file(str(result_dir / f"gradients{rank}.safetensors"))
        assert gradients.keys() == single_gradients.keys()
        for name, gradient in single_gradients.items():
            torch.testing.assert_close(gradients[name], gradient, atol=1e-5, rtol=0, msg=name)
        weights = load_file(str(result_dir / f"weights{rank}.safetensors"))
        for name, value in single_weights.items():
            torch.testing.assert_close(weights[name], value, atol=1e-5, rtol=0, msg=name)

    # Only rank 0 wrote: the shared run folder looks exactly like the single process's, one line per step.
    assert _files_under(tmp_path / "ddp") == _files_under(tmp_path / "single")
    ddp_lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    single_lines = (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line).get("step") for line in ddp_lines] == [
        json.loads(line).get("step") for line in single_lines
    ]
    assert [json.loads(line).get("step") for line in ddp_lines] == [1, 2, None, 3, 4, None]
    ddp_state = json.loads((tmp_path / "ddp" / "last" / "state.json").read_text())
    assert (ddp_state["epoch"], ddp_state["step"]) == (2, 4)
