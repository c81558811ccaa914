"""The grounded region cross-encoder: interface identities, invariances, save/load, paths-only, and a tiny model
that must learn a left/right relation (known answer) from a listwise loss with swapped twins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dcd_itr.distill.contrastive import ListwiseRankingLoss
from dcd_itr.interfaces import expand_score_matrix, is_cross_encoder
from dcd_itr.io_utils import with_checksum
from dcd_itr.models.grounded import GroundedConfig, GroundedCrossEncoder, cut_grounded_student, paths_only
from dcd_itr.models.registry import load_model, save_model_description

IMAGE, TEXT = "regions-test@8", "text-test@6"


def tiny_config(**overrides) -> GroundedConfig:
    settings = dict(
        image_view=IMAGE,
        text_view=TEXT,
        region_dim=16,
        text_dim=12,
        ground_dim=16,
        width=32,
        num_heads=2,
        max_text_tokens=6,
        max_pairs_per_chunk=5,  # small chunks: score_matrix must stitch them correctly
    )
    return GroundedConfig(**{**settings, **overrides})


def random_features(num_images: int, num_texts: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    regions = torch.randn(num_images, 4, 16, generator=generator)
    region_mask = torch.tensor([[True, True, True, False], [True, True, False, False]] * num_images)[
        :num_images
    ]
    corner = torch.rand(num_images, 4, 2, generator=generator) * 0.5
    boxes = torch.cat([corner, corner + 0.3], dim=-1)  # (N, 4, 4)
    tokens = torch.randn(num_texts, 6, 12, generator=generator)
    lengths = torch.randint(2, 7, (num_texts,), generator=generator)
    text_mask = torch.arange(6)[None] < lengths[:, None]  # (M, 6)
    images = {f"{IMAGE}.tokens": regions, f"{IMAGE}.mask": region_mask, f"{IMAGE}.boxes": boxes}
    return images, {f"{TEXT}.tokens": tokens, f"{TEXT}.mask": text_mask}


@pytest.fixture
def model() -> GroundedCrossEncoder:
    torch.manual_seed(0)
    return GroundedCrossEncoder(tiny_config()).eval()


def encoded(model, num_images=3, num_texts=7, seed=0):
    images, texts = random_features(num_images, num_texts, seed)
    return model.encode_images(images), model.encode_texts(texts)


@torch.no_grad()
def test_pair_scores_equal_score_matrix_entries(model):
    assert is_cross_encoder(model) and model.fusion_depth == 2
    images, texts = encoded(model)
    matrix = model.score_matrix(images, texts)  # (3, 7), fusion in chunks of 5 captions
    torch.testing.assert_close(matrix, expand_score_matrix(model, images, texts), rtol=1e-5, atol=1e-5)
    assert matrix.std() > 0  # not a constant


@torch.no_grad()
def test_permuting_regions_does_not_change_scores(model):
    images, texts = random_features(3, 7)
    order = torch.tensor([2, 0, 3, 1])  # moves the padding slot too
    permuted = {key: value[:, order] for key, value in images.items()}
    before = model.score_matrix(model.encode_images(images), model.encode_texts(texts))
    after = model.score_matrix(model.encode_images(permuted), model.encode_texts(texts))
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_padding_tokens_do_not_matter(model):
    images, texts = random_features(2, 4)
    noisy = dict(texts)
    noisy[f"{TEXT}.tokens"] = texts[f"{TEXT}.tokens"] + 100.0 * (~texts[f"{TEXT}.mask"]).unsqueeze(-1)
    images = model.encode_images(images)
    torch.testing.assert_close(
        model.score_matrix(images, model.encode_texts(texts)),
        model.score_matrix(images, model.encode_texts(noisy)),
    )


@torch.no_grad()
def test_fusion_removed_is_the_similarity_path(model):
    images, texts = encoded(model)
    stripped = paths_only(model)
    assert not stripped.config.fusion and model.config.fusion  # the original is untouched
    paths = stripped.score_matrix(images, texts)
    torch.testing.assert_close(paths, model.similarity_matrix(images, texts))
    torch.testing.assert_close(
        stripped.score_pairs(images, {k: v[:3] for k, v in texts.items()}), paths.diagonal()
    )
    fusion = model.score_matrix(images, texts) - paths
    assert fusion.abs().max() > 1e-4  # the fusion term is really there


def test_save_load_round_trip(model, tmp_path):
    save_model_description(model, tmp_path)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp_path / "model.safetensors"), metadata=with_checksum(weights))
    loaded = load_model(tmp_path)
    assert isinstance(loaded, GroundedCrossEncoder) and loaded.config == model.config
    images, texts = random_features(3, 7)
    with torch.no_grad():
        expected = model.score_matrix(model.encode_images(images), model.encode_texts(texts))
        got = loaded.score_matrix(loaded.encode_images(images), loaded.encode_texts(texts))
    torch.testing.assert_close(got, expected)


def test_cut_student_keeps_half_the_layers(model):
    student = cut_grounded_student(model)
    assert student.fusion_depth == 1 and model.fusion_depth == 2
    for name, value in student.layers[0].state_dict().items():
        torch.testing.assert_close(value, model.layers[0].state_dict()[name])
    torch.testing.assert_close(student.head.weight, model.head.weight)


# ------------------------------------------------------------------ known answer: learn "x left of y" from twins

VOCAB, REGION_DIM, TEXT_DIM = 6, 16, 12


def relation_world(seed: int = 0):
    """Object k is region vector R[k] in images and token vector T[k] in captions; caption (x, y) = tokens
    [x, LEFT, y] says x is left of y. The twin of image (x left, y right) is (y left, x right)."""
    generator = torch.Generator().manual_seed(seed)
    region_vectors = torch.randn(VOCAB, REGION_DIM, generator=generator)
    token_vectors = torch.randn(VOCAB + 1, TEXT_DIM, generator=generator)  # the last one is "left of"
    return region_vectors, token_vectors


def relation_batch(pairs: torch.Tensor, world, generator: torch.Generator):
    """pairs (B, 2) object ids, first on the left -> region features and its two captions' token features."""
    region_vectors, token_vectors = world
    count = pairs.shape[0]
    order = torch.rand(count, generator=generator) < 0.5  # which region slot holds the left object
    slots = torch.where(order[:, None], pairs, pairs.flip(1))  # (B, 2)
    x_left = 0.05 + 0.3 * torch.rand(count, generator=generator)
    x_right = 0.55 + 0.3 * torch.rand(count, generator=generator)
    left_box = torch.stack(
        [x_left, torch.full_like(x_left, 0.3), x_left + 0.1, torch.full_like(x_left, 0.4)], 1
    )
    right_box = torch.stack(
        [x_right, torch.full_like(x_left, 0.3), x_right + 0.1, torch.full_like(x_left, 0.4)], 1
    )
    boxes = torch.where(
        order[:, None, None], torch.stack([left_box, right_box], 1), torch.stack([right_box, left_box], 1)
    )
    regions = region_vectors[slots] + 0.1 * torch.randn(count, 2, REGION_DIM, generator=generator)
    images = {
        f"{IMAGE}.tokens": regions,
        f"{IMAGE}.mask": torch.ones(count, 2, dtype=torch.bool),
        f"{IMAGE}.boxes": boxes,
    }

    def caption(first, second):
        ids = torch.stack([first, torch.full_like(first, VOCAB), second], 1)  # (B, 3)
        return {f"{TEXT}.tokens": token_vectors[ids], f"{TEXT}.mask": torch.ones(count, 3, dtype=torch.bool)}

    return images, caption(pairs[:, 0], pairs[:, 1]), caption(pairs[:, 1], pairs[:, 0])


def twin_accuracy(model, world, pairs, seed=99) -> float:
    """Fraction of scenes whose true caption outscores the swapped one (chance 0.5)."""
    images, true_caption, swapped = relation_batch(pairs, world, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return (model(images, true_caption) > model(images, swapped)).float().mean().item()


@pytest.mark.slow  # 300 optimizer steps: ~10 s on an idle core
def test_tiny_model_learns_left_of_from_swapped_twins():
    torch.manual_seed(0)
    world = relation_world()
    all_pairs = torch.tensor([(a, b) for a in range(VOCAB) for b in range(VOCAB) if a != b])
    model = GroundedCrossEncoder(tiny_config(num_layers=2, max_text_tokens=3))
    untrained = twin_accuracy(model.eval(), world, all_pairs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn, generator = ListwiseRankingLoss(), torch.Generator().manual_seed(1)
    model.train()
    for _ in range(300):
        pairs = all_pairs[torch.randint(len(all_pairs), (32,), generator=generator)]
        images, true_caption, swapped = relation_batch(pairs, world, generator)
        other = all_pairs[torch.randint(len(all_pairs), (32,), generator=generator)]
        _, random_caption, _ = relation_batch(other, world, generator)  # mostly other objects: recognition
        logits = torch.stack(
            [model(images, true_caption), model(images, swapped), model(images, random_caption)], 1
        )
        loss = loss_fn(logits)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = twin_accuracy(model.eval(), world, all_pairs)
    assert trained >= 0.95, (untrained, trained)
    assert (
        twin_accuracy(paths_only(model), world, all_pairs) <= 0.75
    )  # a bag of objects cannot tell twins apart


# ------------------------------------------------------------------ training lists of the grounded teacher


def toy_scene_index():
    """8 scenes = 4 twin pairs (rows 2p, 2p+1), 2 captions each; scenes 0-3 share objects, 4-7 share others."""
    from dcd_itr.tasks.grounded_teacher import SceneIndex

    twin = np.asarray([1, 0, 3, 2, 5, 4, 7, 6])
    captions = [[2 * i, 2 * i + 1] for i in range(8)]
    sharing = [
        np.asarray([r for r in range(4 * (i // 4), 4 * (i // 4) + 4) if r not in (i, twin[i])])
        for i in range(8)
    ]
    return SceneIndex(twin, captions, sharing)


def test_ranking_lists_hold_positive_then_twin_and_no_other_positive():
    from dcd_itr.tasks.grounded_teacher import GroundedTeacherConfig, ranking_lists

    config = GroundedTeacherConfig(steps_per_epoch=3, anchors_per_batch=6, negatives=5, hard_negatives=2)
    index = toy_scene_index()
    batches = ranking_lists(index, config, epoch=1)
    assert len(batches) == 3
    for kind, image_rows, caption_rows in batches:
        assert kind == "rank" and image_rows.shape == caption_rows.shape == (6, 6)
        for images, captions in zip(image_rows.tolist(), caption_rows.tolist(), strict=True):
            owner = [c // 2 for c in captions]
            if len(set(images)) == 1:  # image -> text
                image = images[0]
                assert owner[0] == image and owner[1] == index.twin[image]
                assert captions[1] % 2 == captions[0] % 2  # the twin's caption with the same template
                assert image not in owner[1:] and len(set(captions)) == 6
                assert owner[2] == index.twin[image]  # then the twin's other caption (its converse form)
                assert set(owner[3:5]) <= set(index.sharing[image].tolist())  # then hard: share an object
            else:  # text -> image
                assert len(set(captions)) == 1 and owner[0] == images[0]
                assert images[1] == index.twin[images[0]] and len(set(images)) == 6
                assert set(images[2:4]) <= set(index.sharing[images[0]].tolist())  # hard: share an object
    again = ranking_lists(index, config, epoch=1)
    assert all(
        torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(batches, again, strict=True)
    )
