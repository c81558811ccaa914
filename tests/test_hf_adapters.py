"""Tests for the Hugging Face cross-encoder adapters, on tiny random configs of the real classes (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipImageProcessorPil,
    BlipProcessor,
    BridgeTowerConfig,
    BridgeTowerImageProcessorPil,
    BridgeTowerProcessor,
    RobertaTokenizer,
    ViltConfig,
    ViltImageProcessorPil,
    ViltProcessor,
)

from dcd_itr.interfaces import CrossEncoder, concat_features, expand_score_matrix, feature_batch_size
from dcd_itr.models.hf_adapters import (
    HF_CROSS_ENCODERS,
    BlipITMCrossEncoder,
    HFCrossEncoder,
    ViltCrossEncoder,
    full_size_config,
    load_hf_cross_encoder,
)

KINDS = sorted(HF_CROSS_ENCODERS)
VOCAB_WORDS = "a an the cat cats dog red blue green on sits runs mat grass photo of small big"
CAPTIONS = [
    "a red cat sits on the mat",
    "the dog",
    "a photo of a small blue dog runs on the green grass",
    "big cat",
    "green mat",
]
INIT_RANGE = 0.2  # larger than the usual 0.02 so tiny random models give clearly different scores per pair


def make_images() -> list[Image.Image]:
    """Four small images of different colours and aspect ratios (ViLT keeps aspect ratios)."""
    generator = torch.Generator().manual_seed(0)
    sizes = [(48, 32), (32, 48), (40, 40), (64, 30)]
    images = []
    for width, height in sizes:
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        images.append(Image.fromarray(pixels.numpy(), mode="RGB"))
    return images


def bert_tokenizer(folder: Path, extra_tokens: tuple[str, ...] = ()) -> BertTokenizer:
    """A WordPiece tokenizer from a tiny vocab file (transformers 5 reads the file through ``vocab=``)."""
    vocab_file = folder / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *extra_tokens]
    vocab_file.write_text("\n".join(specials + VOCAB_WORDS.split()) + "\n")
    return BertTokenizer(vocab=str(vocab_file))


def roberta_tokenizer(folder: Path) -> RobertaTokenizer:
    """A byte-level BPE tokenizer from tiny vocab.json / merges.txt files: letters, space marker, a few merges."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for symbol in [*"abcdefghijklmnopqrstuvwxyz", "Ġ"]:
        vocab.setdefault(symbol, len(vocab))
    merges = ["Ġ c", "a t", "Ġc at", "Ġ d", "o g", "Ġd og", "Ġ t", "h e", "Ġt he"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return RobertaTokenizer.from_pretrained(str(folder), local_files_only=True)


def tiny_adapter(kind: str, folder: Path, **kwargs) -> HFCrossEncoder:
    """A tiny random instance of the real ``transformers`` class for ``kind``, with an offline processor."""
    tiny = {
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "initializer_range": INIT_RANGE,
    }
    if kind == "vilt":
        config = ViltConfig(
            **tiny,
            num_hidden_layers=2,
            image_size=32,
            patch_size=16,
            max_position_embeddings=40,
            vocab_size=40,
        )
        image_processor = ViltImageProcessorPil(size={"shortest_edge": 32}, size_divisor=16)
        processor = ViltProcessor(image_processor=image_processor, tokenizer=bert_tokenizer(folder))
    elif kind == "bridgetower":
        config = BridgeTowerConfig(
            hidden_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            initializer_factor=4.0,
            text_config={**tiny, "num_hidden_layers": 3, "vocab_size": 60, "max_position_embeddings": 64},
            vision_config={"hidden_size": 64, "num_hidden_layers": 3, "image_size": 32, "patch_size": 16},
        )
        image_processor = BridgeTowerImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"shortest_edge": 32}, size_divisor=16
        )
        processor = BridgeTowerProcessor(image_processor=image_processor, tokenizer=roberta_tokenizer(folder))
    else:
        config = BlipConfig(
            text_config={
                **tiny,
                "num_hidden_layers": 2,
                "vocab_size": 40,
                "max_position_embeddings": 64,
                "pad_token_id": 0,
                "bos_token_id": 2,
                "sep_token_id": 3,
                "eos_token_id": 3,
                "encoder_hidden_size": 32,
            },
            vision_config={**tiny, "num_hidden_layers": 2, "image_size": 32, "patch_size": 16},
            image_text_hidden_size=16,
            projection_dim=16,
        )
        image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
        processor = BlipProcessor(image_processor=image_processor, tokenizer=bert_tokenizer(folder))
    torch.manual_seed(0)
    model = HF_CROSS_ENCODERS[kind].model_class(config)
    return HF_CROSS_ENCODERS[kind](model, processor, pair_batch_size=3, **kwargs)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=KINDS)
def adapter(request, tmp_path_factory) -> HFCrossEncoder:
    return tiny_adapter(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return make_images()


def test_is_a_cross_encoder_in_eval_mode(adapter):
    assert isinstance(adapter, CrossEncoder)
    assert not adapter.model.training
    assert not adapter.timing_only
    config = adapter.model.config
    expected = (
        config.text_config.num_hidden_layers if adapter.kind == "blip-itm" else config.num_hidden_layers
    )
    assert adapter.fusion_depth == expected == 2


def test_feature_shapes_share_batch_dim_and_concatenate(adapter, images):
    image_features = concat_features([adapter.encode_images(images[:1]), adapter.encode_images(images[1:])])
    text_features = concat_features([adapter.encode_texts(CAPTIONS[:2]), adapter.encode_texts(CAPTIONS[2:])])
    assert feature_batch_size(image_features) == len(images)
    assert feature_batch_size(text_features) == len(CAPTIONS)
    assert text_features["attention_mask"].shape == (len(CAPTIONS), adapter.max_text_length)
    assert adapter.score_pairs(image_features, slice_rows(text_features, 4)).shape == (4,)
    assert adapter.score_matrix(image_features, text_features).shape == (len(images), len(CAPTIONS))


def slice_rows(features, count):
    return {name: value[:count] for name, value in features.items()}


def test_cached_scores_match_the_models_own_forward(adapter, images):
    """Known answer: the cached path reproduces ``model(**processor(images, texts))`` pair by pair."""
    texts = CAPTIONS[:4]
    expected = adapter.reference_scores(images, texts)  # (4,)
    got = adapter.score_pairs(adapter.encode_images(images), adapter.encode_texts(texts))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert expected.std() > 1e-3, "tiny model scores every pair the same: the test would prove nothing"


def test_pair_scores_do_not_depend_on_batch_mates(adapter, images):
    image_features = adapter.encode_images(images)
    text_features = adapter.encode_texts(CAPTIONS[:4])
    batched = adapter.score_pairs(image_features, text_features)  # chunks of 3: one full, one partial
    for row in range(4):
        alone_images = adapter.encode_images(images[row : row + 1])
        alone_texts = adapter.encode_texts(CAPTIONS[row : row + 1])
        alone = adapter.score_pairs(alone_images, alone_texts)
        torch.testing.assert_close(alone, batched[row : row + 1], atol=1e-4, rtol=0)


def test_score_matrix_equals_pair_scores_on_the_expanded_grid(adapter, images):
    image_features = adapter.encode_images(images[:3])
    text_features = adapter.encode_texts(CAPTIONS)
    matrix = adapter.score_matrix(image_features, text_features)  # (3, 5): grid of 15, chunks of 3
    reference = expand_score_matrix(adapter, image_features, text_features)
    torch.testing.assert_close(matrix, reference, atol=1e-4, rtol=0)
    diagonal = adapter.score_pairs(image_features, slice_rows(text_features, 3))
    torch.testing.assert_close(matrix.diagonal(), diagonal, atol=1e-4, rtol=0)


def test_scores_are_deterministic(adapter, images):
    first = adapter.score_matrix(adapter.encode_images(images), adapter.encode_texts(CAPTIONS))
    second = adapter.score_matrix(adapter.encode_images(images), adapter.encode_texts(CAPTIONS))
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_save_and_load_round_trip(adapter, images, tmp_path):
    adapter.save_pretrained(tmp_path)
    loaded = load_hf_cross_encoder(adapter.kind, tmp_path, local_files_only=True, pair_batch_size=3)
    assert type(loaded) is type(adapter) and loaded.max_text_length == adapter.max_text_length
    saved_weights, loaded_weights = adapter.model.state_dict(), loaded.model.state_dict()
    assert saved_weights.keys() == loaded_weights.keys()
    assert all(torch.equal(saved_weights[name], loaded_weights[name]) for name in saved_weights)
    before = adapter.score_matrix(adapter.encode_images(images), adapter.encode_texts(CAPTIONS))
    after = loaded.score_matrix(loaded.encode_images(images), loaded.encode_texts(CAPTIONS))
    # identical weights and inputs; CPU kernels may round differently on differently aligned (mmapped) weights
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_from_config_is_flagged_timing_only(adapter, images):
    random_model = type(adapter).from_config(adapter.model.config, pair_batch_size=4)
    assert random_model.timing_only and "timing_only=True" in repr(random_model)
    scores = random_model.score_matrix(
        random_model.encode_images(images[:2]), random_model.encode_texts(CAPTIONS)
    )
    assert scores.shape == (2, len(CAPTIONS)) and torch.isfinite(scores).all()


def test_vilt_text_is_capped_at_its_position_table(tmp_path):
    vilt = tiny_adapter("vilt", tmp_path, max_text_length=100)
    assert vilt.max_text_length == 40  # ViLT's max_position_embeddings
    features = vilt.encode_texts([" ".join(["cat"] * 80)])
    assert features["input_ids"].shape == (1, 40)


def test_vilt_image_tokens_follow_aspect_ratio_and_pad_to_a_fixed_length(tmp_path, images):
    vilt = tiny_adapter("vilt", tmp_path)
    assert isinstance(vilt, ViltCrossEncoder)
    # shorter side 32 -> 2 patches of 16; longer side at most int(1333/800*32) = 53 px -> 3 patches
    assert vilt.max_image_tokens == 1 + 2 * 3
    features = vilt.encode_images(images)
    assert features["image_embeds"].shape == (4, 7, 32)
    # 40x40 -> 32x32 px: 2x2 patches; 64x30 -> capped at 53 px long, 25 px short -> 48x16 px: 1x3 patches
    assert features["image_mask"].sum(dim=1).tolist() == [7, 7, 5, 4]


def test_blip_enc_token_option(tmp_path, images):
    with pytest.raises(ValueError, match=r"\[ENC\]"):
        tiny_adapter("blip-itm", tmp_path, use_enc_token=True)
    blip = BlipITMCrossEncoder(
        tiny_adapter("blip-itm", tmp_path).model,
        BlipProcessor(
            image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
            tokenizer=bert_tokenizer(tmp_path, extra_tokens=("[ENC]",)),
        ),
        use_enc_token=True,
    )
    text_features = blip.encode_texts(CAPTIONS[:2])
    assert (text_features["input_ids"][:, 0] == blip.enc_token_id).all()
    got = blip.score_pairs(blip.encode_images(images[:2]), text_features)
    torch.testing.assert_close(got, blip.reference_scores(images[:2], CAPTIONS[:2]), atol=1e-4, rtol=1e-4)


def test_registry_and_loader_errors(tmp_path):
    assert set(HF_CROSS_ENCODERS) == {"vilt", "bridgetower", "blip-itm"}
    with pytest.raises(ValueError, match="known kinds: blip-itm, bridgetower, vilt"):
        load_hf_cross_encoder("meter", "anything")
    with pytest.raises(OSError, match="'vilt' cross-encoder.*local_files_only"):
        load_hf_cross_encoder("vilt", tmp_path / "missing", local_files_only=True)
    with pytest.raises(ValueError, match="aligned"):
        adapter = tiny_adapter("vilt", tmp_path)
        adapter.score_pairs(adapter.encode_images(make_images()[:2]), adapter.encode_texts(CAPTIONS[:3]))


def test_full_size_configs_have_the_published_shapes():
    vilt = full_size_config("vilt")
    assert (vilt.hidden_size, vilt.num_hidden_layers, vilt.num_attention_heads) == (768, 12, 12)
    assert (vilt.image_size, vilt.patch_size, vilt.max_position_embeddings) == (384, 32, 40)
    blip = full_size_config("blip-itm")
    vision = blip.vision_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (384, 16, 768)
    assert (blip.text_config.num_hidden_layers, blip.text_config.hidden_size) == (12, 768)
    tower = full_size_config("bridgetower")
    assert (tower.num_hidden_layers, tower.hidden_size, tower.vision_config.image_size) == (6, 768, 288)
    assert tower.text_config.num_hidden_layers == tower.vision_config.num_hidden_layers == 12
    with pytest.raises(ValueError, match="unknown cross-encoder kind"):
        full_size_config("clip")


@pytest.mark.slow
def test_full_size_vilt_with_random_weights_scores_one_pair():
    vilt = ViltCrossEncoder.from_config(full_size_config("vilt"))
    assert vilt.timing_only and vilt.fusion_depth == 12
    image = Image.new("RGB", (640, 480), (120, 30, 200))
    scores = vilt.score_matrix(vilt.encode_images([image]), vilt.encode_texts(["a purple square"]))
    assert scores.shape == (1, 1) and torch.isfinite(scores).all()
    # 384 px shorter side, at most 639 px longer side, 32 px patches
    assert vilt.max_image_tokens == 1 + 12 * 19
