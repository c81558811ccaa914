"""BridgeTower (``BridgeTowerForImageAndTextRetrieval``) as a DCD cross-encoder.

BridgeTower runs a text tower (RoBERTa) and a vision tower (CLIP ViT) side by side and feeds the outputs of
their top ``L`` layers, through "bridge" (link-tower) layers, into ``L`` co-attention layers. The two towers
never see the other modality, so everything up to the bridges is unimodal and is cached here: per image the
``L`` bridge inputs of the vision tower, per caption the ``L`` bridge inputs of the text tower. Scoring a pair
then runs only the link towers, the ``L`` cross-modal layers, the poolers and the ITM head -- the same
operations, in the same order, as ``BridgeTowerModel.forward`` (``reference_scores`` runs that forward for
comparison). The price is cache size: ``L * (1 + patches) * hidden`` numbers per image (6 x 325 x 768 for the
base model, about 6 MB in float32).

Score: ``itm_logits[:, 1] - itm_logits[:, 0]``, the log-odds of "match" under the head's 2-way softmax. The
softmax depends only on this difference, so it keeps everything the head says; the match logit alone carries
a per-pair offset the softmax ignores. It is a logit, which is what the distillation losses expect.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from tokenizers.models import BPE
from torch import nn
from transformers import (
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerImageProcessorPil,
    BridgeTowerProcessor,
    PretrainedConfig,
    RobertaTokenizer,
)
from transformers.masking_utils import create_bidirectional_mask

from dcd_itr.interfaces import FeatureBatch
from dcd_itr.models.hf_base import HFCrossEncoder, check_images, trim_to_longest

ROBERTA_SPECIAL_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}  # RoBERTa's own special ids


def _layer(module: nn.Module, index: int) -> nn.Module:
    """``module[index]`` for per-layer module lists, ``module`` itself when the config shares one across layers."""
    return module[index] if isinstance(module, nn.ModuleList) else module


class BridgeTowerCrossEncoder(HFCrossEncoder):
    """BridgeTower retrieval model behind the :class:`CrossEncoder` interface.

    Image features: ``{"image_states": (B, L, Ni, C)}``; text features: ``{"text_states": (B, L, T, C),
    "attention_mask": (B, T)}``, with ``L = fusion_depth``, ``Ni`` = 1 + patches, ``T = max_text_length``.
    """

    kind = "bridgetower"
    model_class = BridgeTowerForImageAndTextRetrieval
    processor_class = BridgeTowerProcessor
    default_max_text_length = 50  # BridgeTower's pre-training and fine-tuning text length

    @classmethod
    def timing_processor(cls, config: PretrainedConfig) -> BridgeTowerProcessor:
        """BridgeTower's image pipeline at the config's size; a RoBERTa tokenizer mapping each word to <unk>."""
        side = config.vision_config.image_size
        image_processor = BridgeTowerImageProcessorPil(
            size={"shortest_edge": side},
            crop_size={"shortest_edge": side},
            size_divisor=config.vision_config.patch_size,
        )
        tokenizer = RobertaTokenizer(vocab=dict(ROBERTA_SPECIAL_IDS), merges=[])
        # fuse_unk: an unknown word becomes one <unk> (not zero tokens), so caption lengths stay realistic
        word_level_unknowns = BPE(dict(ROBERTA_SPECIAL_IDS), [], unk_token="<unk>", fuse_unk=True)
        tokenizer.backend_tokenizer.model = word_level_unknowns
        return BridgeTowerProcessor(image_processor=image_processor, tokenizer=tokenizer)

    @property
    def fusion_depth(self) -> int:
        """The number of co-attention layers (each bridged to one unimodal layer per tower)."""
        return self.model.config.num_hidden_layers

    def _max_text_positions(self) -> int:
        text_config = self.model.config.text_config
        return text_config.max_position_embeddings - text_config.pad_token_id - 1  # RoBERTa offsets positions

    def _split_index(self) -> int:
        """How many unimodal layers run before the first bridge (as ``BridgeTowerModel.forward`` computes it)."""
        return len(self.model.bridgetower.text_model.encoder.layer) - self.fusion_depth + 1

    def _text_mask(self, states: torch.Tensor, attention_mask: torch.Tensor):
        """The text attention bias ``BridgeTowerModel.forward`` builds (query length 1, broadcast over queries)."""
        return create_bidirectional_mask(
            config=self.model.bridgetower.config,
            inputs_embeds=states[:, 0:1, :],
            attention_mask=attention_mask,
        )

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> FeatureBatch:
        """Bridge inputs of the vision tower for each image, ``pair_batch_size`` images per pass."""
        images = check_images(images)
        chunks = []
        for start in range(0, len(images), self.pair_batch_size):
            pixels = self.processor.image_processor(
                images=list(images[start : start + self.pair_batch_size]), return_tensors="pt"
            )
            chunks.append(self._image_states(pixels["pixel_values"].to(self.device)))
        return {"image_states": torch.cat(chunks)}

    def _image_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, L, Ni, C): what each bridge layer receives from the vision tower."""
        bridgetower = self.model.bridgetower
        visual = bridgetower.vision_model.visual
        vision_dtype = bridgetower.vision_model.dtype
        hidden = visual.forward_pre(pixel_values.type(vision_dtype))  # (Ni, B, Cv): sequence first
        split = self._split_index()
        for block in visual.transformer.resblocks[:split]:
            hidden = block(hidden)
        image_type_id = torch.ones(1, dtype=torch.long, device=self.device)
        image_type = bridgetower.token_type_embeddings(image_type_id)  # (1, C)
        transform = bridgetower.cross_modal_image_transform
        first = (
            _layer(transform, 0)(visual.forward_post(hidden.type(vision_dtype))) + image_type
        )  # (B, Ni, C)
        states = [bridgetower.cross_modal_image_layernorm(first)]
        for link, index in enumerate(range(split, len(bridgetower.text_model.encoder.layer)), start=1):
            hidden = visual.transformer.resblocks[index](hidden).type(vision_dtype)
            states.append(_layer(transform, link)(visual.forward_post(hidden)) + image_type)
        return torch.stack(states, dim=1)  # (B, L, Ni, C)

    def _text_features(self, tokens: FeatureBatch) -> FeatureBatch:
        """Bridge inputs of the text tower for each caption.

        The tower runs only up to the longest caption; the padding columns up to ``max_text_length`` are zeros.
        Padding is masked as a key everywhere and the score pools the first token, so their values never matter.
        """
        bridgetower = self.model.bridgetower
        padded_length = tokens["attention_mask"].shape[1]
        text_length = trim_to_longest(tokens["attention_mask"])
        attention_mask = tokens["attention_mask"][:, :text_length]  # (B, t)
        input_ids = tokens["input_ids"][:, :text_length]  # (B, t)
        hidden = bridgetower.text_model.embeddings(input_ids=input_ids)  # (B, t, C)
        text_mask = self._text_mask(hidden, attention_mask)
        layers = bridgetower.text_model.encoder.layer
        split = self._split_index()
        for layer in layers[:split]:
            hidden = layer(hidden, text_mask)
        text_type_id = torch.zeros(1, dtype=torch.long, device=self.device)
        text_type = bridgetower.token_type_embeddings(text_type_id)  # (1, C)
        transform = bridgetower.cross_modal_text_transform
        states = [bridgetower.cross_modal_text_layernorm(_layer(transform, 0)(hidden) + text_type)]
        for link, index in enumerate(range(split, len(layers)), start=1):
            hidden = layers[index](hidden, text_mask)
            states.append(_layer(transform, link)(hidden) + text_type)
        text_states = torch.stack(states, dim=1)  # (B, L, t, C)
        text_states = nn.functional.pad(text_states, (0, 0, 0, padded_length - text_length))  # (B, L, T, C)
        return {"text_states": text_states, "attention_mask": tokens["attention_mask"]}

    def _score_chunk(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        bridgetower = self.model.bridgetower
        text_length = trim_to_longest(text_features["attention_mask"])
        attention_mask = text_features["attention_mask"][:, :text_length]  # (b, t)
        text_states = text_features["text_states"][:, :, :text_length]  # (b, L, t, C)
        image_states = image_features["image_states"]  # (b, L, Ni, C)
        text_mask = self._text_mask(text_states[:, 0], attention_mask)
        text_layers, image_layers = bridgetower.cross_modal_text_layers, bridgetower.cross_modal_image_layers
        text_in, image_in = text_states[:, 0], image_states[:, 0]
        cross_text = text_layers[0](text_in, image_in, attention_mask=text_mask)[0]  # (b, t, C)
        cross_image = image_layers[0](image_in, text_in, encoder_attention_mask=text_mask)[0]  # (b, Ni, C)
        for link in range(1, self.fusion_depth):
            text_link = _layer(bridgetower.cross_modal_text_link_tower, link - 1)
            image_link = _layer(bridgetower.cross_modal_image_link_tower, link - 1)
            text_in = text_link(text_states[:, link], cross_text, text_mask)  # (b, t, C)
            image_in = image_link(image_states[:, link], cross_image, None)  # (b, Ni, C)
            cross_text = text_layers[link](text_in, image_in, attention_mask=text_mask)[0]
            cross_image = image_layers[link](image_in, text_in, encoder_attention_mask=text_mask)[0]
        logits = self.model.itm_score(bridgetower.get_cls_features(cross_text, cross_image))  # (b, 2)
        return logits[:, 1] - logits[:, 0]  # (b,) log-odds of match

    def _reference_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
        ).logits  # (B, 2)
        return logits[:, 1] - logits[:, 0]
