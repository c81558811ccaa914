"""ViLT (``ViltForImageAndTextRetrieval``) as a DCD cross-encoder.

ViLT is a single-stream transformer: caption tokens and image patches are concatenated before the first layer,
so every layer is a fusion layer and nothing past the embeddings can be computed per modality. What *can* be
cached per image is the visual embedding -- patch projection, interpolated position embeddings and [CLS]
(``ViltEmbeddings.visual_embed``) -- which ``ViltModel`` accepts back through ``image_embeds``. Per caption
the cache is the token ids.

Score: the retrieval logit (``rank_output``, one number per pair), exactly what the model's own forward returns.

Image tokens: ViLT keeps each image's aspect ratio (shorter side 384 for the published checkpoints), so images
have different numbers of patches. Each image is embedded alone (its tokens never depend on its batch-mates)
and right-padded with masked tokens to a fixed ``max_image_tokens``, so feature batches concatenate; scoring
trims the padding columns a chunk does not need. ``visual_embed`` shuffles patch order (and subsamples patches
when ``config.max_image_length`` is positive) with the global RNG; we run it under a fixed seed so an image's
features are reproducible. Order does not change the result (positions are added before the shuffle).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    PretrainedConfig,
    ViltForImageAndTextRetrieval,
    ViltImageProcessorPil,
    ViltProcessor,
)

from dcd_itr.interfaces import FeatureBatch
from dcd_itr.models.hf_base import HFCrossEncoder, check_images, trim_to_longest

PATCH_SAMPLING_SEED = (
    0  # fixed seed for visual_embed's patch shuffle: the same image always gives the same tokens
)
MAX_LONGER_OVER_SHORTER = 1333 / 800  # ViLT's resize caps the longer side at this multiple of the shorter one


class ViltCrossEncoder(HFCrossEncoder):
    """ViLT retrieval model behind the :class:`CrossEncoder` interface.

    Image features: ``{"image_embeds": (B, Li, C), "image_mask": (B, Li)}`` with ``Li = max_image_tokens``.
    Text features: ``{"input_ids", "attention_mask", "token_type_ids"}``, each (B, T), T = ``max_text_length``.
    """

    kind = "vilt"
    model_class = ViltForImageAndTextRetrieval
    processor_class = ViltProcessor
    default_max_text_length = 40  # ViLT was trained with 40 text positions; longer captions are truncated

    def __init__(self, model: ViltForImageAndTextRetrieval, processor: ViltProcessor, **kwargs) -> None:
        super().__init__(model, processor, **kwargs)
        self.max_image_tokens = self._image_token_bound()

    @classmethod
    def timing_processor(cls, config: PretrainedConfig) -> ViltProcessor:
        """ViLT's own image pipeline resized for ``config.image_size``, with a specials-only WordPiece tokenizer."""
        image_processor = ViltImageProcessorPil(
            size={"shortest_edge": config.image_size}, size_divisor=config.patch_size
        )
        return ViltProcessor(image_processor=image_processor, tokenizer=BertTokenizer())

    @property
    def fusion_depth(self) -> int:
        """Every ViLT layer attends across both modalities."""
        return self.model.config.num_hidden_layers

    def _max_text_positions(self) -> int:
        return self.model.config.max_position_embeddings

    def _token_keys(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask", "token_type_ids")

    def _image_token_bound(self) -> int:
        """Most tokens ([CLS] + patches) one processed image can yield; the fixed padded length of image features."""
        config = self.model.config
        shorter = getattr(self.processor.image_processor.size, "shortest_edge", None)
        if shorter is None or not self.processor.image_processor.do_resize:
            patches = (config.image_size // config.patch_size) ** 2  # unresized: assume the config's square
        else:
            longer = int(MAX_LONGER_OVER_SHORTER * shorter)
            patches = (shorter // config.patch_size) * (longer // config.patch_size)
        if config.max_image_length is not None and config.max_image_length > 0:
            patches = min(patches, config.max_image_length)  # visual_embed subsamples down to this
        return 1 + patches

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> FeatureBatch:
        """Visual embeddings of each image, padded to ``max_image_tokens`` with masked tokens."""
        images = check_images(images)
        embeddings = self.model.vilt.embeddings
        width = self.model.config.hidden_size
        image_embeds = torch.zeros(
            len(images), self.max_image_tokens, width, dtype=self.dtype, device=self.device
        )
        image_mask = torch.zeros(len(images), self.max_image_tokens, dtype=torch.long, device=self.device)
        for row, image in enumerate(images):
            pixels = self.processor.image_processor(
                images=[image], return_tensors="pt"
            )  # one image: no padding
            pixel_values = pixels["pixel_values"].to(self.device, self.dtype)  # (1, 3, H, W)
            pixel_mask = pixels.get(
                "pixel_mask", torch.ones_like(pixel_values[:, 0], dtype=torch.long)
            )  # (1, H, W)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(PATCH_SAMPLING_SEED)
                tokens, mask, _ = embeddings.visual_embed(
                    pixel_values,
                    pixel_mask.to(self.device),
                    max_image_length=self.model.config.max_image_length,
                )  # tokens (1, 1+P, C), mask (1, 1+P)
            if tokens.shape[1] > self.max_image_tokens:
                raise ValueError(
                    f"image {row} gave {tokens.shape[1]} tokens, more than the {self.max_image_tokens} this "
                    "processor should allow; is the image processor configured to resize?"
                )
            image_embeds[row, : tokens.shape[1]] = tokens[0]
            image_mask[row, : mask.shape[1]] = mask[0]
        return {"image_embeds": image_embeds, "image_mask": image_mask}

    def _score_chunk(self, image_features: FeatureBatch, text_features: FeatureBatch) -> torch.Tensor:
        text_length = trim_to_longest(text_features["attention_mask"])
        image_length = trim_to_longest(image_features["image_mask"])
        output = self.model(
            input_ids=text_features["input_ids"][:, :text_length],  # (b, t)
            attention_mask=text_features["attention_mask"][:, :text_length],
            token_type_ids=text_features["token_type_ids"][:, :text_length],
            image_embeds=image_features["image_embeds"][:, :image_length],  # (b, li, C)
            pixel_mask=image_features["image_mask"][:, :image_length],  # read as the image-token mask
        )
        return output.logits[:, 0]  # (b,)

    def _reference_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(PATCH_SAMPLING_SEED)
            return self.model(**inputs).logits[:, 0]  # (B,)
