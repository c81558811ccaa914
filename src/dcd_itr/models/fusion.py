"""The fusion cross-encoder: METER's co-attention design on frozen packaged towers.

Teacher and compressed student share this class. A pair's logit is the sum of two parts::

    logit(i, t) = sum_p  scale_p * cos(image_p(i), text_p(t))        # pooled-similarity paths (dual heads)
                + head([pool_img(fused_i), pool_txt(fused_t)])       # co-attention fusion term

The similarity paths (one per frozen image view, each a :class:`DualEncoderModel`, pre-trained as a dual) make
the model a strong ensemble from step one; the fusion head's output layer starts at zero, so training can only
add what the fusion layers learn. A compressed student is cut from the teacher's fusion layers with
:func:`cut_student` (half the layers, spread over the depth, first and last included; everything else copied).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dcd_itr.encoders.views import DEFAULT_TEXT_LENGTH
from dcd_itr.interfaces import FeatureBatch, feature_batch_size, slice_features
from dcd_itr.models.dual import DualConfig, DualEncoderModel


@dataclass
class FusionConfig:
    similarity_paths: list[DualConfig] = field(default_factory=list)  # empty -> fusion term alone
    fusion_image_view: str | None = "efficientnet-lite2@260"  # None -> no fusion term (a pure ensemble)
    fusion_text_view: str = f"minilm-l6@{DEFAULT_TEXT_LENGTH}"
    image_token_dim: int = 352  # Lite2's last-block width
    text_token_dim: int = 384  # MiniLM-L6 hidden size
    image_grid: int = 3  # image tokens average-pooled to 3x3: 2.5x the pairs/s of 5x5 on CPU
    max_text_tokens: int = DEFAULT_TEXT_LENGTH  # positions for the text stream (the tower's max length)
    width: int = 96  # fusion width: ~1,400 pairs/s on 2 CPU cores with 4 layers
    num_layers: int = 4  # a student cut from it keeps 2 (layers 0 and 3)
    num_heads: int = 4
    ffn_multiplier: int = 4
    dropout: float = 0.1
    max_pairs_per_chunk: int = 2048  # bounds the memory of score_matrix's expanded pairs


class CoAttentionLayer(nn.Module):
    """One METER co-attention layer on two streams: self-attention, cross-attention to the other stream, FFN."""

    def __init__(self, width: int, num_heads: int, ffn_multiplier: int, dropout: float) -> None:
        super().__init__()

        def attention() -> nn.MultiheadAttention:
            return nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)

        def ffn() -> nn.Sequential:
            hidden = ffn_multiplier * width
            return nn.Sequential(
                nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width)
            )

        self.self_attention = nn.ModuleList([attention(), attention()])  # [image, text]
        self.cross_attention = nn.ModuleList([attention(), attention()])
        self.ffn = nn.ModuleList([ffn(), ffn()])
        self.norms = nn.ModuleList([nn.LayerNorm(width) for _ in range(6)])  # 3 per stream (pre-norm)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, image_pad: torch.Tensor, text_pad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image (P, Ni, W), text (P, Lt, W); *_pad (P, n) True where a position is padding."""
        streams, pads = [image, text], [image_pad, text_pad]
        for s in range(2):
            normed = self.norms[3 * s](streams[s])
            attended, _ = self.self_attention[s](
                normed, normed, normed, key_padding_mask=pads[s], need_weights=False
            )
            streams[s] = streams[s] + self.dropout(attended)
        after_self = list(streams)
        for s in range(2):
            other = 1 - s
            query = self.norms[3 * s + 1](after_self[s])
            attended, _ = self.cross_attention[s](
                query, after_self[other], after_self[other], key_padding_mask=pads[other], need_weights=False
            )
            streams[s] = streams[s] + self.dropout(attended)
        for s in range(2):
            streams[s] = streams[s] + self.dropout(self.ffn[s](self.norms[3 * s + 2](streams[s])))
        return streams[0], streams[1]


class FusionCrossEncoder(nn.Module):
    """A :class:`~dcd_itr.interfaces.CrossEncoder` on cached token features (see the module docstring)."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.paths = nn.ModuleList([DualEncoderModel(path) for path in config.similarity_paths])
        self.path_scales = nn.Parameter(torch.full((len(self.paths),), 20.0 / max(1, len(self.paths))))
        self.has_fusion = config.fusion_image_view is not None and config.num_layers > 0
        width = config.width
        self.image_projection = nn.Sequential(nn.Linear(config.image_token_dim, width), nn.LayerNorm(width))
        self.text_projection = nn.Sequential(nn.Linear(config.text_token_dim, width), nn.LayerNorm(width))
        self.image_positions = nn.Parameter(torch.randn(1, config.image_grid**2 + 1, width) * 0.02)
        self.text_positions = nn.Parameter(torch.randn(1, config.max_text_tokens + 1, width) * 0.02)
        self.cls_tokens = nn.Parameter(torch.randn(2, width) * 0.02)  # [image, text]
        self.layers = nn.ModuleList(
            CoAttentionLayer(width, config.num_heads, config.ffn_multiplier, config.dropout)
            for _ in range(config.num_layers)
        )
        self.poolers = nn.ModuleList([nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(2)])
        self.head = nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.head[-1].weight)  # fusion term starts at exactly zero: the teacher starts as its
        nn.init.zeros_(self.head[-1].bias)  # ensemble of similarity paths

    @property
    def fusion_depth(self) -> int:
        return len(self.layers)

    @property
    def image_views(self) -> list[str]:
        views = [path.image_view for path in self.config.similarity_paths]
        return sorted(set(views + ([self.config.fusion_image_view] if self.has_fusion else [])))

    @property
    def text_views(self) -> list[str]:
        views = [path.text_view for path in self.config.similarity_paths]
        return sorted(set(views + ([self.config.fusion_text_view] if self.has_fusion else [])))

    def encode_images(self, images: FeatureBatch) -> FeatureBatch:
        """Unimodal work, once per image: each path's embedding and the projected fusion tokens."""
        out = {
            f"path{p}.embedding": path.encode_images(images)["embedding"] for p, path in enumerate(self.paths)
        }
        if self.has_fusion:
            view = self.config.fusion_image_view
            pooled = self._pool_image_tokens(images[f"{view}.tokens"])  # (B, G*G, C)
            out["fusion.image_tokens"] = self.image_projection(pooled)  # (B, G*G, W)
        return out

    def _pool_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tower tokens -> (B, G*G, C). A CNN grid (N = h*w) or a ViT's tokens (N = 1 + h*w, CLS dropped)
        are average-pooled to G x G; any other sequence is average-pooled along its length to G*G tokens."""
        count, grid = tokens.shape[1], self.config.image_grid
        for skip in (0, 1):
            side = math.isqrt(max(0, count - skip))
            if side > 0 and side * side == count - skip:
                spatial = (
                    tokens[:, skip:].transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
                )  # (B, C, h, w)
                return F.adaptive_avg_pool2d(spatial, grid).flatten(2).transpose(1, 2)
        return F.adaptive_avg_pool1d(tokens.transpose(1, 2), grid * grid).transpose(1, 2)

    def encode_texts(self, texts: FeatureBatch) -> FeatureBatch:
        out = {
            f"path{p}.embedding": path.encode_texts(texts)["embedding"] for p, path in enumerate(self.paths)
        }
        if self.has_fusion:
            view = self.config.fusion_text_view
            out["fusion.text_tokens"] = self.text_projection(texts[f"{view}.tokens"])  # (B, L, W)
            out["fusion.text_mask"] = texts[f"{view}.mask"]  # (B, L) True at real tokens
        return out

    def fusion_logits(self, image: FeatureBatch, text: FeatureBatch) -> torch.Tensor:
        """Aligned image and text features of P pairs -> fusion logits (P,)."""
        text_mask = text["fusion.text_mask"]  # (P, L)
        length = max(1, int(text_mask.sum(dim=1).max()))  # drop all-padding columns: captions are short
        text_tokens, text_mask = text["fusion.text_tokens"][:, :length], text_mask[:, :length]
        pairs = text_tokens.shape[0]
        cls_image = self.cls_tokens[0].expand(pairs, 1, -1)
        cls_text = self.cls_tokens[1].expand(pairs, 1, -1)
        image_stream = (
            torch.cat([cls_image, image["fusion.image_tokens"]], dim=1) + self.image_positions
        )  # (P, 1+G*G, W)
        text_stream = (
            torch.cat([cls_text, text_tokens], dim=1) + self.text_positions[:, : length + 1]
        )  # (P, 1+L, W)
        image_pad = torch.zeros(image_stream.shape[:2], dtype=torch.bool, device=image_stream.device)
        text_pad = torch.cat([torch.zeros_like(text_mask[:, :1]), ~text_mask.bool()], dim=1)  # (P, 1+L)
        for layer in self.layers:
            image_stream, text_stream = layer(image_stream, text_stream, image_pad, text_pad)
        pooled = torch.cat([self.poolers[0](image_stream[:, 0]), self.poolers[1](text_stream[:, 0])], dim=-1)
        return self.head(pooled).squeeze(-1)  # (P,)

    def score_pairs(self, image: FeatureBatch, text: FeatureBatch) -> torch.Tensor:
        """Aligned batches of B images and B captions -> logits (B,)."""
        logits = torch.zeros(feature_batch_size(image), device=self.path_scales.device)
        for p in range(len(self.paths)):
            cosine = (image[f"path{p}.embedding"] * text[f"path{p}.embedding"]).sum(dim=-1)  # (B,)
            logits = logits + self.path_scales[p] * cosine
        return logits + self.fusion_logits(image, text) if self.has_fusion else logits

    def forward(self, images: FeatureBatch, texts: FeatureBatch) -> torch.Tensor:
        """Training entry point (what DistributedDataParallel wraps): aligned cached features -> logits (B,)."""
        return self.score_pairs(self.encode_images(images), self.encode_texts(texts))

    def similarity_matrix(self, image: FeatureBatch, text: FeatureBatch) -> torch.Tensor:
        """The similarity paths alone for every image x caption: (Ni, Mt)."""
        logits = torch.zeros(
            feature_batch_size(image), feature_batch_size(text), device=self.path_scales.device
        )
        for p in range(len(self.paths)):
            logits = logits + self.path_scales[p] * image[f"path{p}.embedding"] @ text[f"path{p}.embedding"].T
        return logits

    def score_matrix(self, image: FeatureBatch, text: FeatureBatch) -> torch.Tensor:
        """Every image against every caption -> logits (Ni, Mt); fusion pairs are expanded in bounded chunks."""
        logits = self.similarity_matrix(image, text)
        if not self.has_fusion:
            return logits
        num_images, num_texts = logits.shape
        image_rows = torch.arange(num_images).repeat_interleave(num_texts)  # (Ni*Mt,)
        text_rows = torch.arange(num_texts).repeat(num_images)  # (Ni*Mt,)
        fused = []
        for start in range(0, len(image_rows), self.config.max_pairs_per_chunk):
            chunk = slice(start, start + self.config.max_pairs_per_chunk)
            fused.append(
                self.fusion_logits(
                    slice_features(image, image_rows[chunk]), slice_features(text, text_rows[chunk])
                )
            )
        return logits + torch.cat(fused).reshape(num_images, num_texts)


def spread_layer_indices(num_layers: int, keep: int) -> list[int]:
    """``keep`` indices spread over ``num_layers``, first and last included: (6, 3) -> [0, 3, 5]."""
    if keep < 1 or keep > num_layers:
        raise ValueError(f"cannot keep {keep} of {num_layers} layers")
    if keep == 1:
        return [0]
    return [int(math.floor(i * (num_layers - 1) / (keep - 1) + 0.5)) for i in range(keep)]


def cut_student(teacher: FusionCrossEncoder, layer_indices: list[int] | None = None) -> FusionCrossEncoder:
    """A compressed cross-encoder: the teacher's fusion layers at ``layer_indices`` (default: half, spread),
    with projections, similarity paths, poolers and head copied. The teacher is left untouched."""
    indices = layer_indices or spread_layer_indices(teacher.fusion_depth, max(1, teacher.fusion_depth // 2))
    config = copy.deepcopy(teacher.config)
    config.num_layers = len(indices)
    student = FusionCrossEncoder(config)
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("layers.")}
    for new_index, old_index in enumerate(indices):
        layer_state = teacher.layers[old_index].state_dict()
        state.update({f"layers.{new_index}.{k}": v for k, v in layer_state.items()})
    student.load_state_dict({k: v.clone() for k, v in state.items()})
    return student
