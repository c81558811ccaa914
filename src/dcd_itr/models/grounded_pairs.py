"""Pair scoring of a grounded cross-encoder split into query-independent encodings and a vectorised per-pair part.

:class:`~dcd_itr.models.grounded.GroundedCrossEncoder` scores a pair as ``path + head(fusion(ground(i, t)))``.
Everything that depends on one side only is computed once per item by :class:`GroundedPairScorer`:

- image side (:meth:`~GroundedPairScorer.encode_images`): the l2-normed grounding keys (R, G), the region mask,
  the similarity path's embedding, and the region geometry already multiplied by the geometry MLP's first layer
  (R, W): ``W1[:, :6] @ (sum_r a_r geometry_r) = sum_r a_r (W1[:, :6] @ geometry_r)``, so the per-pair part only
  mixes R precomputed rows;
- text side (:meth:`~GroundedPairScorer.encode_texts`): grounding queries (L, G), token inputs with their position
  embeddings already added (L, W), the token mask, the path embedding; L is the view's width, so blocks encoded
  separately concatenate, and each pair chunk drops the columns that are padding in all of its captions.

The per-pair part (:meth:`~GroundedPairScorer.score`) takes P (image row, caption row) index pairs and runs, over
all P at once (no per-image loop): token -> region grounding (P, L, R), the rest of the geometry MLP, every fusion
layer but the last as the model's own ``TransformerEncoderLayer``, and the last layer **for the CLS position
only** — the only output the head reads. For that layer the CLS query is folded into the keys and values::

    score_h(t) = (W_q,h y_cls + b_q,h) . (W_k,h y_t + b_k,h) / sqrt(d)  =  y_t . u_h / sqrt(d) + const_h
    u_h = W_k,h^T (W_q,h y_cls + b_q,h)                          (the const drops out of the softmax over t)
    out_h = sum_t a_h(t) (W_v,h y_t + b_v,h) = W_v,h (sum_t a_h(t) y_t) + b_v,h      (the a_h(t) sum to 1)

so the last layer costs ~2 H W multiply-adds per token instead of a full layer's ~(4 W^2 + 2 W F). The result is
the same function as ``model.score_pairs`` (equal up to float rounding; tests/test_grounded_pairs.py). The scorer
is itself a :class:`~dcd_itr.interfaces.CrossEncoder` (``score_pairs``, ``score_matrix``, views, depth): evaluation
and the cascade use it in the model's place (``dcd_itr.evaluate.scoring.scoring_model``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dcd_itr.interfaces import FeatureBatch, feature_batch_size
from dcd_itr.models.grounded import GroundedCrossEncoder, box_geometry

DEFAULT_PAIR_CHUNK = (
    512  # pairs per vectorised step: (P, L, W) activations of ~4 MB stay in cache (8192 ran 2x slower)
)

IMAGE_KEYS = ("pairs.keys", "pairs.geometry", "pairs.region_mask", "path.embedding")
TEXT_KEYS = ("pairs.queries", "pairs.inputs", "pairs.text_mask", "path.embedding")


def _l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-6)


class GroundedPairScorer(nn.Module):
    """Query-independent encodings and the vectorised per-pair part of a :class:`GroundedCrossEncoder`.

    Holds no weights of its own: it reads ``model``'s, so a scorer of the teacher and one of its cut student
    differ only in their fusion layers."""

    def __init__(self, model: GroundedCrossEncoder, pair_chunk: int = DEFAULT_PAIR_CHUNK) -> None:
        super().__init__()
        if not isinstance(model, GroundedCrossEncoder):
            raise TypeError(f"GroundedPairScorer needs a GroundedCrossEncoder, not {type(model).__name__}")
        self.model, self.pair_chunk = model, pair_chunk

    @property
    def fused(self) -> bool:
        return bool(self.model.config.fusion and self.model.fusion_depth > 0)

    # the rest of the CrossEncoder protocol (dcd_itr.interfaces), so evaluation can use the scorer as the model
    @property
    def fusion_depth(self) -> int:
        return self.model.fusion_depth

    @property
    def image_views(self) -> list[str]:
        return self.model.image_views

    @property
    def text_views(self) -> list[str]:
        return self.model.text_views

    # ------------------------------------------------------------------ query-independent parts

    def encode_images(self, images: FeatureBatch) -> FeatureBatch:
        """Cached region view -> image-side encodings: keys (N, R, G), geometry x W1 (N, R, W), mask, path."""
        model, view = self.model, self.model.config.image_view
        regions, mask = images[f"{view}.tokens"], images[f"{view}.mask"].bool()  # (N, R, C), (N, R)
        weights = mask.unsqueeze(-1).to(regions.dtype)
        pooled = (regions * weights).sum(1) / weights.sum(1).clamp(min=1)  # (N, C)
        first = model.geometry_mlp[0]  # Linear(8, W): columns 0..5 read the box geometry
        geometry = box_geometry(images[f"{view}.boxes"], mask) @ first.weight[:, :6].T  # (N, R, W)
        return {
            "pairs.keys": _l2(model.region_projection(regions)),  # (N, R, G)
            "pairs.geometry": geometry,
            "pairs.region_mask": mask,
            "path.embedding": _l2(model.path_image(pooled)),  # (N, G)
        }

    def encode_texts(self, texts: FeatureBatch) -> FeatureBatch:
        """Cached token view -> text-side encodings: queries (M, L, G), inputs + positions (M, L, W), mask, path.

        Only the columns up to the batch's longest caption are projected; the outputs are zero-padded back to the
        view's width L, so encodings of different batches concatenate and can be sliced by row (:meth:`score`
        drops the columns that are padding in every caption of a pair chunk)."""
        model, view = self.model, self.model.config.text_view
        tokens, mask = texts[f"{view}.tokens"], texts[f"{view}.mask"].bool()  # (M, L_view, C), (M, L_view)
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)  # (M, C)
        width = tokens.shape[1]
        length = max(1, int(mask.sum(dim=1).max())) if mask.numel() else 1
        tokens = tokens[:, :length]  # (M, L, C)
        inputs = model.text_input(tokens) + model.positions[:, 1 : 1 + length]  # (M, L, W)

        def padded(x: torch.Tensor) -> torch.Tensor:  # (M, L, D) -> (M, L_view, D), zeros on padding columns
            return F.pad(x, (0, 0, 0, width - length))

        return {
            "pairs.queries": padded(_l2(model.token_projection(tokens))),  # (M, L_view, G)
            "pairs.inputs": padded(inputs),  # (M, L_view, W)
            "pairs.text_mask": mask,
            "path.embedding": _l2(model.path_text(pooled)),  # (M, G)
        }

    # ------------------------------------------------------------------ the per-pair part

    def score(
        self,
        images: FeatureBatch,  # from encode_images
        texts: FeatureBatch,  # from encode_texts
        image_rows: torch.Tensor,  # (P,) int64 rows of ``images``
        text_rows: torch.Tensor,  # (P,) int64 rows of ``texts``
    ) -> torch.Tensor:
        """Logits (P,) of the pairs (images[image_rows[p]], texts[text_rows[p]]), ``pair_chunk`` pairs a step."""
        image_rows, text_rows = image_rows.flatten().long(), text_rows.flatten().long()
        if image_rows.shape != text_rows.shape:
            raise ValueError(
                f"image_rows {tuple(image_rows.shape)} and text_rows {tuple(text_rows.shape)} differ"
            )
        chunk = self.pair_chunk
        parts = [
            self._score_chunk(images, texts, image_rows[s : s + chunk], text_rows[s : s + chunk])
            for s in range(0, len(image_rows), chunk)
        ]
        return torch.cat(parts) if parts else torch.zeros(0)

    def score_pairs(self, images: FeatureBatch, texts: FeatureBatch) -> torch.Tensor:
        """Aligned batches (row b with row b) of B encoded images and B encoded captions -> logits (B,), as
        ``model.score_pairs``."""
        num_pairs = feature_batch_size(images)
        if feature_batch_size(texts) != num_pairs:
            raise ValueError(
                f"score_pairs needs aligned batches: {num_pairs} images vs {feature_batch_size(texts)} captions"
            )
        rows = torch.arange(num_pairs)
        return self.score(images, texts, rows, rows)

    def score_matrix(self, images: FeatureBatch, texts: FeatureBatch) -> torch.Tensor:
        """Every image against every caption -> logits (N, M), as ``model.score_matrix``."""
        num_images, num_texts = feature_batch_size(images), feature_batch_size(texts)
        image_rows = torch.arange(num_images).repeat_interleave(num_texts)  # (N*M,) image-major
        text_rows = torch.arange(num_texts).repeat(num_images)
        return self.score(images, texts, image_rows, text_rows).view(num_images, num_texts)

    def _score_chunk(
        self, images: FeatureBatch, texts: FeatureBatch, image_rows: torch.Tensor, text_rows: torch.Tensor
    ) -> torch.Tensor:
        model = self.model
        logits = model.path_scale * (
            images["path.embedding"][image_rows] * texts["path.embedding"][text_rows]
        ).sum(-1)  # (P,)
        if not self.fused:
            return logits
        token_mask = texts["pairs.text_mask"][text_rows]  # (P, L_view)
        length = max(1, int(token_mask.sum(dim=1).max())) if token_mask.numel() else 1
        token_mask = token_mask[:, :length]  # (P, L): columns that are padding in every caption dropped
        tokens = self._grounded_tokens(images, texts, image_rows, text_rows, length)  # (P, L, W)
        pairs, width = tokens.shape[0], tokens.shape[-1]
        cls = (model.cls_token + model.positions[:, :1]).expand(pairs, 1, width)  # (P, 1, W)
        stream = torch.cat([cls, tokens], dim=1)  # (P, 1+L, W)
        padding = torch.cat([torch.zeros_like(token_mask[:, :1]), ~token_mask], dim=1)  # (P, 1+L)
        for layer in model.layers[:-1]:
            stream = layer(stream, src_key_padding_mask=padding)
        cls_out = _last_layer_cls(model.layers[-1], stream, padding)  # (P, W)
        return logits + model.head(model.final_norm(cls_out)).squeeze(-1)

    def _grounded_tokens(
        self,
        images: FeatureBatch,
        texts: FeatureBatch,
        image_rows: torch.Tensor,
        text_rows: torch.Tensor,
        length: int,  # the first ``length`` token columns (the rest is padding in every caption of the chunk)
    ) -> torch.Tensor:
        """Token inputs + the geometry MLP of what each token grounded to: (P, L, W)."""
        model = self.model
        keys = images["pairs.keys"][image_rows]  # (P, R, G)
        region_mask = images["pairs.region_mask"][image_rows].unsqueeze(1)  # (P, 1, R)
        queries = texts["pairs.queries"][text_rows, :length]  # (P, L, G)
        cosines = torch.bmm(queries, keys.transpose(1, 2))  # (P, L, R)
        scaled = (model.log_grounding_scale.exp() * cosines).masked_fill(~region_mask, float("-inf"))
        attention = scaled.softmax(dim=-1)  # (P, L, R)
        first = model.geometry_mlp[0]
        hidden = torch.bmm(
            attention, images["pairs.geometry"][image_rows]
        )  # (P, L, W) = W1[:, :6] @ geometry
        best = cosines.masked_fill(~region_mask, -1.0).amax(dim=-1, keepdim=True)  # (P, L, 1)
        expected = (attention * cosines).sum(-1, keepdim=True)  # (P, L, 1)
        hidden = hidden + best * first.weight[:, 6] + expected * first.weight[:, 7] + first.bias
        for module in model.geometry_mlp[1:]:  # GELU, Linear(W, W), LayerNorm or Identity
            hidden = module(hidden)
        return texts["pairs.inputs"][text_rows, :length] + hidden


def _last_layer_cls(
    layer: nn.TransformerEncoderLayer, stream: torch.Tensor, padding: torch.Tensor
) -> torch.Tensor:
    """A pre-norm ``TransformerEncoderLayer``'s output at position 0 only (see the module docstring): (P, W)."""
    if not layer.norm_first:
        raise ValueError("the CLS-only last layer is written for pre-norm (norm_first=True) layers")
    attention = layer.self_attn
    pairs, _, width = stream.shape
    heads = attention.num_heads
    head_dim = width // heads
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)  # (W, W) each
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
    normed = layer.norm1(stream)  # (P, 1+L, W)
    query = (normed[:, 0] @ w_q.T + b_q).view(pairs, heads, head_dim)  # (P, H, d)
    folded = torch.einsum("phd,hdw->phw", query, w_k.view(heads, head_dim, width))  # (P, H, W)
    scores = torch.bmm(folded, normed.transpose(1, 2)) / math.sqrt(head_dim)  # (P, H, 1+L)
    weights = scores.masked_fill(padding.unsqueeze(1), float("-inf")).softmax(dim=-1)
    mixed = torch.bmm(weights, normed)  # (P, H, W): attention-weighted normed tokens per head
    values = torch.einsum("phw,hdw->phd", mixed, w_v.view(heads, head_dim, width)) + b_v.view(heads, head_dim)
    attended = attention.out_proj(values.reshape(pairs, width))  # (P, W)
    cls = stream[:, 0] + attended
    return cls + layer.linear2(layer.activation(layer.linear1(layer.norm2(cls))))


def pair_scorer(model: nn.Module) -> GroundedPairScorer | None:
    """The split scorer of a grounded cross-encoder, or None for a model without one."""
    return GroundedPairScorer(model) if isinstance(model, GroundedCrossEncoder) else None
