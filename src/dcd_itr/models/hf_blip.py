"""BLIP's image-text matching head (``BlipForImageTextRetrieval``, ``use_itm_head=True``) as a DCD cross-encoder.

BLIP encodes the image with a ViT that never sees the caption, then runs a BERT text encoder whose every layer
cross-attends to the ViT's output tokens. So the image side is cached in full -- the vision model's
``last_hidden_state``, once per image -- and a pair costs one text-encoder pass. For one image against many
captions (``score_matrix``) the image tokens are passed with batch size 1 and broadcast inside the
cross-attention, so each layer projects them to keys and values once per chunk instead of once per caption.

Score: ``itm_logits[:, 1] - itm_logits[:, 0]``, the log-odds of "match" (not the softmax probability): the
2-way softmax depends only on this difference, and the distillation losses work on logits.

First token: ``transformers`` feeds the tokenizer's ``[CLS]`` to the ITM text encoder; the original BLIP code
replaces it with an ``[ENC]`` token (transformers issues #22732, #25629). ``use_enc_token=False`` (default)
reproduces ``BlipForImageTextRetrieval.forward`` exactly; ``True`` follows the original code, and needs a
tokenizer that knows ``[ENC]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    BlipForImageTextRetrieval,
    BlipImageProcessorPil,
    BlipProcessor,
    PretrainedConfig,
)

from dcd_itr.interfaces import FeatureBatch, feature_batch_size, slice_features
from dcd_itr.models.hf_base import HFCrossEncoder, check_images, trim_to_longest

ENC_TOKEN = "[ENC]"  # the original BLIP's first token for image-grounded text encoding


class BlipITMCrossEncoder(HFCrossEncoder):
    """BLIP ITM model behind the :class:`CrossEncoder` interface.

    Image features: ``{"image_embeds": (B, Ni, Cv)}`` (ViT output, Ni = 1 + patches). Text features:
    ``{"input_ids", "attention_mask"}``, each (B, T), T = ``max_text_length``.
    """

    kind = "blip-itm"
    model_class = BlipForImageTextRetrieval
    processor_class = BlipProcessor
    default_max_text_length = 35  # BLIP's retrieval fine-tuning and evaluation text length

    def __init__(
        self,
        model: BlipForImageTextRetrieval,
        processor: BlipProcessor,
        *,
        use_enc_token: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(model, processor, **kwargs)
        self.enc_token_id: int | None = None
        if use_enc_token:
            token_id = processor.tokenizer.convert_tokens_to_ids(ENC_TOKEN)
            if token_id is None or token_id == processor.tokenizer.unk_token_id:
                raise ValueError(f"use_enc_token=True but the tokenizer has no {ENC_TOKEN} token")
            self.enc_token_id = token_id

    @classmethod
    def timing_processor(cls, config: PretrainedConfig) -> BlipProcessor:
        """BLIP's square image pipeline at the config's size, with a specials-only WordPiece tokenizer."""
        side = config.vision_config.image_size
        image_processor = BlipImageProcessorPil(size={"height": side, "width": side})
        return BlipProcessor(image_processor=image_processor, tokenizer=BertTokenizer())

    @property
    def fusion_depth(self) -> int:
        """Every text-encoder layer cross-attends to the image."""
        return self.model.config.text_config.num_hidden_layers

    def _max_text_positions(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    def _text_features(self, tokens: FeatureBatch) -> FeatureBatch:
        if self.enc_token_id is not None:
            tokens["input_ids"][:, 0] = self.enc_token_id
        return tokens

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> FeatureBatch:
        """ViT output tokens for each image, ``pair_batch_size`` images per pass."""
        images = check_images(images)
        chunks = []
        for start in range(0, len(images), self.pair_batch_size):
            batch = list(images[start : start + self.pair_batch_size])
            pixel_values = self.processor.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            output = self.model.vision_model(pixel_values=pixel_values.to(self.device, self.dtype))
            chunks.append(output.last_hidden_state)  # (b, Ni, Cv)
        return {"image_embeds": torch.cat(chunks)}

    def _score_chunk(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        """Image rows (b or 1, Ni, Cv) against caption rows (b, T); one image row is broadcast to all captions."""
        text_length = trim_to_longest(text_features["attention_mask"])
        image_embeds = image_features["image_embeds"]
        image_mask = torch.ones(
            image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device
        )  # (b, Ni)
        hidden = self.model.text_encoder(
            input_ids=text_features["input_ids"][:, :text_length],
            attention_mask=text_features["attention_mask"][:, :text_length],
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state  # (b, t, C)
        logits = self.model.itm_head(hidden[:, 0, :])  # (b, 2)
        return logits[:, 1] - logits[:, 0]  # (b,) log-odds of match

    @torch.inference_mode()
    def score_matrix(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        """Every image against every caption -> (Ni, Mt): per image, its tokens are shared by each caption chunk."""
        num_images = feature_batch_size(image_features)
        num_texts = feature_batch_size(text_features)
        rows = []
        for image_index in range(num_images):
            image = self._to_device(
                slice_features(image_features, slice(image_index, image_index + 1))
            )  # batch 1
            row = []
            for start in range(0, num_texts, self.pair_batch_size):
                texts = self._to_device(
                    slice_features(text_features, slice(start, start + self.pair_batch_size))
                )
                row.append(self._score_chunk(image, texts).float().cpu())  # (b,)
            rows.append(torch.cat(row) if row else torch.zeros(0))
        return torch.stack(rows) if rows else torch.zeros(0, num_texts)

    def _reference_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids = inputs["input_ids"]
        if self.enc_token_id is not None:
            input_ids = input_ids.clone()
            input_ids[:, 0] = self.enc_token_id
        output = self.model(
            input_ids=input_ids,
            pixel_values=inputs["pixel_values"],
            attention_mask=inputs["attention_mask"],
            use_itm_head=True,
        )
        return output.itm_score[:, 1] - output.itm_score[:, 0]  # (B,)
