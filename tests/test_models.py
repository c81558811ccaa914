"""Dual and fusion models: known-answer structure checks, student cutting, cached vs end-to-end identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dcd_itr.data.loading import load_split
from dcd_itr.encoders import build_image_tower, build_text_tower
from dcd_itr.features import FeatureStore, build_feature_cache
from dcd_itr.interfaces import expand_score_matrix, slice_features
from dcd_itr.models.dual import DualConfig, DualEncoderModel
from dcd_itr.models.end_to_end import EndToEnd
from dcd_itr.models.fusion import FusionConfig, FusionCrossEncoder, cut_student, spread_layer_indices
from dcd_itr.models.registry import load_model, load_model_weights, save_model_description


def tiny_fusion(num_layers: int = 4, paths: int = 2) -> FusionCrossEncoder:
    dual = DualConfig(
        image_view="img@1", text_view="txt@6", image_dim=12, text_dim=8, hidden_dim=16, embed_dim=8
    )
    config = FusionConfig(
        similarity_paths=[dual] * paths,
        fusion_image_view="img@1",
        fusion_text_view="txt@6",
        image_token_dim=12,
        text_token_dim=8,
        image_grid=2,
        max_text_tokens=6,
        width=16,
        num_layers=num_layers,
        num_heads=2,
        max_pairs_per_chunk=5,
    )
    return FusionCrossEncoder(config).eval()


def tiny_features(num_images: int = 3, num_texts: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = {
        "img@1.tokens": torch.randn(num_images, 9, 12, generator=generator),
        "img@1.pooled": torch.randn(num_images, 12, generator=generator),
    }
    lengths = torch.tensor([3, 1, 6, 2])[:num_texts]
    mask = torch.arange(6)[None, :] < lengths[:, None]  # (M, 6)
    texts = {
        "txt@6.tokens": torch.randn(num_texts, 6, 8, generator=generator),
        "txt@6.mask": mask,
        "txt@6.pooled": torch.randn(num_texts, 8, generator=generator),
    }
    return images, texts


def test_spread_layer_indices_first_and_last() -> None:
    assert spread_layer_indices(6, 3) == [0, 3, 5]
    assert spread_layer_indices(4, 2) == [0, 3]
    assert spread_layer_indices(12, 6) == [0, 2, 4, 7, 9, 11]
    with pytest.raises(ValueError):
        spread_layer_indices(2, 3)


def test_fusion_starts_as_the_ensemble_of_its_paths() -> None:
    model = tiny_fusion()
    images, texts = tiny_features()
    with torch.no_grad():
        encoded = model.encode_images(images), model.encode_texts(texts)
        scores = model.score_matrix(*encoded)
        expected = sum(
            model.path_scales[p] * encoded[0][f"path{p}.embedding"] @ encoded[1][f"path{p}.embedding"].T
            for p in range(2)
        )
    torch.testing.assert_close(scores, expected)  # the fusion head's output layer starts at zero


def test_score_matrix_equals_pairwise_and_ignores_padding() -> None:
    torch.manual_seed(0)
    model = tiny_fusion()
    torch.nn.init.normal_(model.head[-1].weight)  # make the fusion term matter
    images, texts = tiny_features()
    with torch.no_grad():
        encoded = model.encode_images(images), model.encode_texts(texts)
        matrix = model.score_matrix(*encoded)  # chunks of 5 pairs: not a divisor of 12
        torch.testing.assert_close(matrix, expand_score_matrix(model, *encoded))
        alone = model.score_pairs(
            slice_features(encoded[0], slice(0, 1)), slice_features(encoded[1], slice(1, 2))
        )
        torch.testing.assert_close(alone[0], matrix[0, 1], atol=1e-5, rtol=0)  # batch-independent
        changed = dict(texts)
        changed["txt@6.tokens"] = texts["txt@6.tokens"].clone()
        changed["txt@6.tokens"][1, 1:] = 99.0  # padding positions of caption 1 (length 1)
        torch.testing.assert_close(model.score_matrix(encoded[0], model.encode_texts(changed)), matrix)


def test_cut_student_copies_the_chosen_layers_and_the_rest() -> None:
    teacher = tiny_fusion(num_layers=4)
    student = cut_student(teacher)
    assert student.fusion_depth == 2 and teacher.fusion_depth == 4
    for new, old in zip([0, 1], [0, 3], strict=True):
        for (name, a), (_, b) in zip(
            student.layers[new].state_dict().items(), teacher.layers[old].state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name
    assert torch.equal(student.head[0].weight, teacher.head[0].weight)
    assert torch.equal(student.paths[1].image_head.mlp[0].weight, teacher.paths[1].image_head.mlp[0].weight)
    student.head[0].weight.data.add_(1.0)
    assert not torch.equal(student.head[0].weight, teacher.head[0].weight)  # copies, not shared tensors


def test_dual_embeddings_are_unit_vectors_and_scaled() -> None:
    model = DualEncoderModel(
        DualConfig(
            image_view="i@1",
            text_view="t@1",
            image_dim=5,
            text_dim=4,
            hidden_dim=8,
            embed_dim=3,
            init_temperature=0.05,
        )
    ).eval()
    images, texts = model({"i@1.pooled": torch.randn(2, 5)}, {"t@1.pooled": torch.randn(3, 4)})
    torch.testing.assert_close(images.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(model.similarity(images, texts), 20.0 * images @ texts.T)


def test_registry_round_trip_and_corrupt_weights(tmp_path: Path) -> None:
    model = tiny_fusion()
    save_model_description(model, tmp_path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    loaded = load_model(tmp_path)
    images, texts = tiny_features()
    with torch.no_grad():
        a = model.score_matrix(model.encode_images(images), model.encode_texts(texts))
        b = loaded.score_matrix(loaded.encode_images(images), loaded.encode_texts(texts))
    assert torch.equal(a, b)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="model.safetensors"):
        load_model_weights(loaded, tmp_path / "model.safetensors")


def test_end_to_end_equals_cached_features(
    karpathy_dataset: Path, tiny_vit_path, tiny_bert_path, tmp_path
) -> None:
    image_view, text_view = f"hf:{tiny_vit_path}@32", f"hf:{tiny_bert_path}@16"
    model = DualEncoderModel(
        DualConfig(
            image_view=image_view, text_view=text_view, image_dim=32, text_dim=32, hidden_dim=16, embed_dim=8
        )
    ).eval()
    split = load_split(karpathy_dataset, "train")
    build_feature_cache(split, build_image_tower(f"hf:{tiny_vit_path}", 32), tmp_path, progress=False)
    build_feature_cache(split, build_text_tower(f"hf:{tiny_bert_path}", 16), tmp_path, progress=False)
    store = FeatureStore(tmp_path, split)
    end_to_end = EndToEnd(model)
    with torch.no_grad():
        cached = model.encode_images(store.image_features([image_view]))["embedding"]
        raw = end_to_end.encode_images(split.image_paths)["embedding"]
        torch.testing.assert_close(cached, raw, atol=1e-5, rtol=0)
        cached_text = model.encode_texts(store.text_features([text_view]))["embedding"]
        torch.testing.assert_close(
            cached_text, end_to_end.encode_texts(split.captions)["embedding"], atol=1e-5, rtol=0
        )
