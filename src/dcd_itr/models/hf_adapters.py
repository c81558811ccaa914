"""Published vision-language cross-encoders as DCD teachers: ViLT, BridgeTower and BLIP-ITM.

Each adapter wraps the real ``transformers`` retrieval class and its processor behind the
:class:`~dcd_itr.interfaces.CrossEncoder` protocol, caching whatever unimodal work the architecture
allows (see each module's docstring) and scoring pairs in bounded chunks:

- ``vilt``: ``ViltForImageAndTextRetrieval``; score = the retrieval logit (``rank_output``); cached per image:
  patch embeddings.
- ``bridgetower``: ``BridgeTowerForImageAndTextRetrieval``; score = ``itm[:, 1] - itm[:, 0]``, the log-odds of
  match; cached per image and per caption: the unimodal towers' bridge inputs.
- ``blip-itm``: ``BlipForImageTextRetrieval`` with the ITM head; score = ``itm[:, 1] - itm[:, 0]``; cached per
  image: the ViT output tokens.

Every score is a logit (higher = better match), as the distillation losses expect.

Usage::

    teacher = load_hf_cross_encoder("vilt", "dandelin/vilt-b32-finetuned-coco", local_files_only=True)
    scores = teacher.score_matrix(teacher.encode_images(images), teacher.encode_texts(captions))  # (Ni, Mt)

For speed benchmarks without downloaded weights, ``HF_CROSS_ENCODERS[kind].from_config(full_size_config(kind))``
builds the published architecture with random weights; such adapters carry ``timing_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import BlipConfig, BridgeTowerConfig, PretrainedConfig, ViltConfig

from dcd_itr.models.hf_base import HFCrossEncoder
from dcd_itr.models.hf_blip import BlipITMCrossEncoder
from dcd_itr.models.hf_bridgetower import BridgeTowerCrossEncoder
from dcd_itr.models.hf_vilt import ViltCrossEncoder

__all__ = [
    "HF_CROSS_ENCODERS",
    "BlipITMCrossEncoder",
    "BridgeTowerCrossEncoder",
    "HFCrossEncoder",
    "ViltCrossEncoder",
    "full_size_config",
    "load_hf_cross_encoder",
]

HF_CROSS_ENCODERS: dict[str, type[HFCrossEncoder]] = {
    "vilt": ViltCrossEncoder,
    "bridgetower": BridgeTowerCrossEncoder,
    "blip-itm": BlipITMCrossEncoder,
}


def _adapter_class(kind: str) -> type[HFCrossEncoder]:
    try:
        return HF_CROSS_ENCODERS[kind]
    except KeyError:
        known = ", ".join(sorted(HF_CROSS_ENCODERS))
        raise ValueError(f"unknown cross-encoder kind {kind!r}; known kinds: {known}") from None


def load_hf_cross_encoder(kind: str, name_or_path: str | Path, **kwargs: Any) -> HFCrossEncoder:
    """Load a published checkpoint of ``kind`` (a key of :data:`HF_CROSS_ENCODERS`) as a cross-encoder.

    ``kwargs`` go to the adapter's ``from_pretrained`` (``device``, ``local_files_only``, ``dtype``,
    ``pair_batch_size``, ``max_text_length``, and ``use_enc_token`` for BLIP). A checkpoint that cannot be
    found raises ``OSError`` naming the kind and the path, with a hint about offline use.
    """
    adapter_class = _adapter_class(kind)
    try:
        return adapter_class.from_pretrained(name_or_path, **kwargs)
    except OSError as error:
        hint = (
            " (local_files_only=True: pass a folder holding the weights, config and processor files)"
            if kwargs.get("local_files_only")
            else ""
        )
        raise OSError(
            f"could not load {kind!r} cross-encoder from {str(name_or_path)!r}{hint}: {error}"
        ) from error


def full_size_config(kind: str) -> PretrainedConfig:
    """The published base architecture of ``kind``, written out by hand (nothing is downloaded).

    For speed benchmarks with random weights: timing depends on the shapes, not the weights.
    - ``vilt``: ViLT-B/32 -- 12 layers, hidden 768, 12 heads, MLP 3072, 384 px shorter side, 32 px patches,
      40 text positions, BERT vocabulary.
    - ``bridgetower``: BridgeTower-base -- RoBERTa-base text tower and CLIP ViT-B/16 at 288 px (12 layers each,
      hidden 768), 6 co-attention layers of hidden 768 with 12 heads.
    - ``blip-itm``: BLIP ITM base -- ViT-B/16 at 384 px (12 layers, hidden 768) and a BERT-base text encoder
      (12 layers, hidden 768) with cross-attention in every layer; vocabulary 30524 (BERT + [DEC], [ENC]).
    """
    _adapter_class(kind)  # a clear error for unknown kinds
    base = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
    if kind == "vilt":
        return ViltConfig(
            **base,
            image_size=384,
            patch_size=32,
            max_position_embeddings=40,
            vocab_size=30522,
            max_image_length=-1,  # the retrieval evaluation keeps every patch
        )
    if kind == "bridgetower":
        return BridgeTowerConfig(
            hidden_size=768,
            num_hidden_layers=6,
            num_attention_heads=12,
            text_config={**base, "vocab_size": 50265, "max_position_embeddings": 514},
            vision_config={"hidden_size": 768, "num_hidden_layers": 12, "patch_size": 16, "image_size": 288},
        )
    return BlipConfig(
        text_config={**base, "vocab_size": 30524, "max_position_embeddings": 512, "encoder_hidden_size": 768},
        vision_config={**base, "image_size": 384, "patch_size": 16},
        image_text_hidden_size=256,
        projection_dim=512,
    )
