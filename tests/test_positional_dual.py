"""The position-aware dual (models/positional.py): positions reach the embedding; the bag dual stays a bag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from dcd_itr.errors import ConfigError
from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.positional import AttentionPoolConfig
from dcd_itr.models.registry import load_model, save_model_description

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE, TEXT = "efficientnet-lite0@128", "minilm-l6@40"
TOKEN_DIM, TEXT_DIM, POOLED_DIM = 8, 12, 10


def tiny_config(attention: bool, pooled_path: bool = False) -> DualConfig:
    pool = AttentionPoolConfig(
        image_token_dim=TOKEN_DIM,
        width=16,
        layers=1,
        heads=2,
        queries=2,
        pooled_path=pooled_path,
        pooled_hidden=8,
    )
    return DualConfig(
        image_view=IMAGE,
        text_view=TEXT,
        image_dim=POOLED_DIM,
        text_dim=TEXT_DIM,
        embed_dim=8,
        hidden_dim=16,
        dropout=0.0,
        attention=pool if attention else None,
    )


def tiny_model(attention: bool, seed: int = 0, pooled_path: bool = False) -> DualEncoderModel:
    torch.manual_seed(seed)
    return DualEncoderModel(tiny_config(attention, pooled_path)).eval()


def image_batch(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the cache holds for an image view: grid tokens, mask, and the pooled mean (a bag of the grid)."""
    return {
        f"{IMAGE}.tokens": tokens,  # (B, N, C)
        f"{IMAGE}.mask": torch.ones(tokens.shape[:2], dtype=torch.bool),
        f"{IMAGE}.pooled": tokens.mean(dim=1).repeat(1, 2)[:, :POOLED_DIM],  # (B, POOLED_DIM), order-free
    }


def text_batch(tokens: torch.Tensor, lengths: list[int]) -> dict[str, torch.Tensor]:
    mask = torch.arange(tokens.shape[1])[None, :] < torch.tensor(lengths)[:, None]  # (B, L)
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # masked mean, as MiniLM pools
    return {f"{TEXT}.tokens": tokens, f"{TEXT}.mask": mask, f"{TEXT}.pooled": pooled}


def swapped_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """A 4x4 grid of tokens and the same grid with the top-left and bottom-right tokens exchanged."""
    torch.manual_seed(1)
    grid = torch.randn(1, 16, TOKEN_DIM)
    swapped = grid.clone()
    swapped[0, [0, 15]] = grid[0, [15, 0]]
    return grid, swapped


@torch.no_grad()
def test_swapping_two_grid_tokens_moves_the_positional_embedding_not_the_bag() -> None:
    grid, swapped = swapped_grid()
    for attention, should_move in ((True, True), (False, False)):
        model = tiny_model(attention)
        first = model.encode_images(image_batch(grid))["embedding"]
        second = model.encode_images(image_batch(swapped))["embedding"]
        assert torch.allclose(first.norm(dim=-1), torch.ones(1), atol=1e-6)
        moved = (first - second).abs().max().item()
        assert (moved > 1e-3) if should_move else (moved < 1e-6), (attention, moved)


@torch.no_grad()
def test_text_pooling_tells_a_left_of_b_from_b_left_of_a() -> None:
    """Token states of "[CLS] a left of b [SEP]" and "[CLS] b left of a [SEP]": the same bag of vectors."""
    torch.manual_seed(2)
    cls, a, left, of, b, sep = torch.randn(6, TEXT_DIM)
    forward = torch.stack([cls, a, left, of, b, sep])[None]  # (1, 6, C)
    backward = torch.stack([cls, b, left, of, a, sep])[None]
    for attention, should_differ in ((True, True), (False, False)):
        model = tiny_model(attention)
        one = model.encode_texts(text_batch(forward, [6]))["embedding"]
        two = model.encode_texts(text_batch(backward, [6]))["embedding"]
        differ = (one - two).abs().max().item()
        assert (differ > 1e-3) if should_differ else (differ < 1e-6), (attention, differ)


@torch.no_grad()
def test_text_padding_changes_nothing() -> None:
    """A caption padded to 40 tokens, alone or beside a longer caption, embeds exactly as it does unpadded."""
    torch.manual_seed(3)
    model = tiny_model(True)
    short = torch.randn(1, 5, TEXT_DIM)
    alone = model.encode_texts(text_batch(short, [5]))["embedding"]
    padded = torch.cat([short, torch.randn(1, 35, TEXT_DIM)], dim=1)  # garbage beyond the mask
    longer = torch.randn(1, 40, TEXT_DIM)
    together = model.encode_texts(text_batch(torch.cat([padded, longer]), [5, 9]))["embedding"]
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def test_positional_dual_round_trips_through_the_registry(tmp_path: Path) -> None:
    model = tiny_model(True, seed=4)
    save_model_description(model, tmp_path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    described = yaml.safe_load((tmp_path / "model.yaml").read_text())
    assert described["kind"] == "dual" and described["config"]["attention"]["queries"] == 2
    loaded = load_model(tmp_path)
    assert loaded.config == model.config and loaded.feature_names == ("tokens", "mask")
    grid, _ = swapped_grid()
    texts = text_batch(torch.randn(2, 7, TEXT_DIM), [7, 4])
    with torch.no_grad():
        assert torch.equal(
            loaded.encode_images(image_batch(grid))["embedding"],
            model.encode_images(image_batch(grid))["embedding"],
        )
        assert torch.equal(loaded.encode_texts(texts)["embedding"], model.encode_texts(texts)["embedding"])


def test_bag_dual_description_is_unchanged_and_reads_pooled(tmp_path: Path) -> None:
    """A bag dual saved before the attention option existed (no ``attention`` key) still loads as a bag."""
    model = tiny_model(False)
    save_model_description(model, tmp_path)
    described = yaml.safe_load((tmp_path / "model.yaml").read_text())
    assert described["config"].pop("attention") is None
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(described))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    loaded = load_model(tmp_path)
    assert loaded.config.attention is None and loaded.feature_names == ("pooled",)


def test_bad_grid_is_a_clear_error() -> None:
    model = tiny_model(True)
    with pytest.raises(ConfigError, match="not a square grid"):
        model.encode_images(image_batch(torch.randn(1, 14, TOKEN_DIM)))
    assert model.encode_images(image_batch(torch.randn(1, 17, TOKEN_DIM)))["embedding"].shape == (1, 8)  # CLS


def test_scenes_configs_load_and_the_dcd_student_is_the_strongest_dual() -> None:
    from dcd_itr.config import load_config
    from dcd_itr.tasks.distill import DistillConfig
    from dcd_itr.tasks.dual_contrastive import DualTrainingConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    bag = load_config(root / "scenes_dual_bag.yaml", DualTrainingConfig)
    strongest = load_config(root / "scenes_dual_pos.yaml", DualTrainingConfig)
    student = load_config(root / "scenes_dcd_dual.yaml", DistillConfig)
    assert bag.model.attention is None and not bag.twin_negatives
    assert strongest.twin_negatives and student.twin_negatives
    assert student.dual == strongest.model  # same architecture, same cheap view


@torch.no_grad()
def test_pooled_path_adds_the_bag_vector_and_keeps_positions() -> None:
    model = tiny_model(True, pooled_path=True)
    assert model.feature_names == ("tokens", "mask", "pooled")
    grid, swapped = swapped_grid()
    first = model.encode_images(image_batch(grid))["embedding"]
    assert (first - model.encode_images(image_batch(swapped))["embedding"]).abs().max() > 1e-3
    other_pooled = {**image_batch(grid), f"{IMAGE}.pooled": torch.zeros(1, POOLED_DIM)}
    assert (first - model.encode_images(other_pooled)["embedding"]).abs().max() > 1e-3
    forward = torch.randn(1, 6, TEXT_DIM)
    backward = forward[:, [0, 4, 2, 3, 1, 5]]  # "a left of b" -> "b left of a": the same masked mean
    one = model.encode_texts(text_batch(forward, [6]))["embedding"]
    assert (one - model.encode_texts(text_batch(backward, [6]))["embedding"]).abs().max() > 1e-3
