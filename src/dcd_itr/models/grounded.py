"""The grounded region cross-encoder: *ground, then reason*.

Inputs are cached views: the region view (one pooled crop feature per detected object + its box, see
:mod:`dcd_itr.encoders.regions`) and the text tower's token states. A pair's logit is::

    logit(i, t) = path_scale * cos(pool_img(i), pool_txt(t))                  # similarity path (a bag dual)
                + head(CLS of Transformer([CLS, grounded tokens of t given i]))  # fusion term

Grounding: every text token l attends over the regions r of the image with a softmax of scaled cosines between
the token's and the regions' projections (``a_lr = softmax_r(tau * cos(q_l, k_r))``) and receives, through a small
MLP added to its embedding, what it grounded to: the attention-weighted box (centre, size), the weighted offset of
that centre from the centre of all regions (relative geometry) and its best and expected match scores. A
transformer over [CLS + grounded tokens] then reads the relation words against where the nouns landed. The text
tokens attend to image regions before any score exists, so the score is not a sum of pooled similarities; with
``fusion: false`` the same weights give the similarity path alone ("paths-only").

A compressed student is cut with :func:`cut_grounded_student` (half the fusion layers, first and last kept).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dcd_itr.interfaces import FeatureBatch, slice_features
from dcd_itr.models.fusion import spread_layer_indices

GEOMETRY_FEATURES = (
    8  # centre (2), size (2), offset from the regions' mean centre (2), best and mean match (2)
)


@dataclass
class GroundedConfig:
    image_view: str = (
        "regions-efficientnet-lite0@96"  # crops of detected objects: cheap, one token per object
    )
    text_view: str = "minilm-l6@40"  # MiniLM token states: the cached text view every model shares
    region_dim: int = 1280  # Lite0's pooled head width
    text_dim: int = 384  # MiniLM-L6 hidden size
    ground_dim: int = 128  # the space where tokens meet regions (and the similarity path's width)
    width: int = 128  # fusion width: ~3,000 scoring pairs/s on one CPU thread with 2 layers
    num_layers: int = 2  # two layers learned two-object binding in the probe; a student keeps one
    num_heads: int = 4
    ffn_multiplier: int = 2  # a small FFN: the fusion reads a handful of numbers per token
    dropout: float = 0.0  # short CPU runs do not overfit; dropout costs a third of a step
    max_text_tokens: int = 40  # positions for the text stream (the tower's max length)
    grounding_scale: float = 10.0  # initial tau of the token->region softmax (learned)
    position_scale: float = 0.5  # init std of the text positions, comparable to the unit-scale token inputs
    geometry_norm: bool = (
        True  # layer-norm the geometry MLP's output: the grounding signal as loud as the word
    )
    fusion: bool = True  # False -> paths-only: the similarity path alone, same weights
    max_pairs_per_chunk: int = 4096  # bounds the memory of score_matrix's expanded pairs


def _l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-6)


def box_geometry(boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, R, 4) normalised (x0, y0, x1, y1) -> (N, R, 6): centre, size, centre minus the mean real centre."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # (N, R, 2)
    size = boxes[..., 2:] - boxes[..., :2]  # (N, R, 2)
    weights = mask.unsqueeze(-1).float()  # (N, R, 1)
    mean_centre = (centre * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
    return torch.cat([centre, size, centre - mean_centre], dim=-1)


class GroundedCrossEncoder(nn.Module):
    """A :class:`~dcd_itr.interfaces.CrossEncoder` on cached region and token features."""

    def __init__(self, config: GroundedConfig) -> None:
        super().__init__()
        self.config = config
        ground, width = config.ground_dim, config.width
        self.region_projection = nn.Linear(config.region_dim, ground)  # regions -> grounding keys
        self.token_projection = nn.Linear(config.text_dim, ground)  # text tokens -> grounding queries
        self.log_grounding_scale = nn.Parameter(torch.tensor(math.log(config.grounding_scale)))
        self.path_image = nn.Linear(config.region_dim, ground)  # similarity path on pooled features
        self.path_text = nn.Linear(config.text_dim, ground)
        self.path_scale = nn.Parameter(torch.tensor(10.0))  # a logit range fit for a softmax over 8
        self.text_input = nn.Sequential(nn.Linear(config.text_dim, width), nn.LayerNorm(width))
        # positions on the scale of the layer-normed token inputs (unit variance per channel): the fusion must tell
        # the subject from the object by order, and 0.02-scale positions drown under unit-scale tokens
        self.positions = nn.Parameter(
            torch.randn(1, config.max_text_tokens + 1, width) * config.position_scale
        )
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.geometry_mlp = nn.Sequential(
            nn.Linear(GEOMETRY_FEATURES, width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.LayerNorm(width) if config.geometry_norm else nn.Identity(),
        )
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                config.num_heads,
                config.ffn_multiplier * width,
                config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.num_layers)
        )
        self.final_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)

    @property
    def fusion_depth(self) -> int:
        return len(self.layers)

    @property
    def image_views(self) -> list[str]:
        return [self.config.image_view]

    @property
    def text_views(self) -> list[str]:
        return [self.config.text_view]

    def encode_images(self, images: FeatureBatch) -> FeatureBatch:
        """Unimodal work, once per image: grounding keys, region geometry, the path embedding."""
        view = self.config.image_view
        regions, mask = images[f"{view}.tokens"], images[f"{view}.mask"].bool()  # (B, R, C), (B, R)
        weights = mask.unsqueeze(-1).to(regions.dtype)
        pooled = (regions * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, C)
        return {
            "grounded.keys": _l2(self.region_projection(regions)),  # (B, R, G)
            "grounded.region_mask": mask,
            "grounded.geometry": box_geometry(images[f"{view}.boxes"], mask),  # (B, R, 6)
            "path.embedding": _l2(self.path_image(pooled)),  # (B, G)
        }

    def encode_texts(self, texts: FeatureBatch) -> FeatureBatch:
        """Unimodal work, once per caption: grounding queries, fusion inputs, the path embedding."""
        view = self.config.text_view
        tokens, mask = texts[f"{view}.tokens"], texts[f"{view}.mask"].bool()  # (B, L, C), (B, L)
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, C)
        return {
            "grounded.queries": _l2(self.token_projection(tokens)),  # (B, L, G)
            "grounded.inputs": self.text_input(tokens),  # (B, L, W)
            "grounded.text_mask": mask,
            "path.embedding": _l2(self.path_text(pooled)),  # (B, G)
        }

    def ground(self, image: FeatureBatch, text: FeatureBatch) -> torch.Tensor:
        """P pairs -> per-token grounding features (P, L, 8) (see the module docstring). The image side may
        have batch 1: it broadcasts over the P captions (one image x many captions, nothing copied)."""
        keys = image["grounded.keys"].transpose(1, 2)  # (P or 1, G, R)
        cosines = text["grounded.queries"] @ keys  # (P, L, R)
        region_mask = image["grounded.region_mask"].unsqueeze(1)  # (P or 1, 1, R)
        logits = (self.log_grounding_scale.exp() * cosines).masked_fill(~region_mask, float("-inf"))
        attention = logits.softmax(dim=-1)  # (P, L, R)
        geometry = attention @ image["grounded.geometry"]  # (P, L, 6)
        best = cosines.masked_fill(~region_mask, -1.0).amax(dim=-1, keepdim=True)  # (P, L, 1)
        expected = (attention * cosines).sum(-1, keepdim=True)  # (P, L, 1)
        return torch.cat([geometry, best, expected], dim=-1)

    def fusion_logits(self, image: FeatureBatch, text: FeatureBatch) -> torch.Tensor:
        """Aligned image and text features of P pairs (or 1 image and P captions) -> fusion logits (P,)."""
        text = _trim_text(text)
        grounded = text["grounded.inputs"] + self.geometry_mlp(self.ground(image, text))  # (P, L, W)
        pairs = grounded.shape[0]
        stream = torch.cat([self.cls_token.expand(pairs, 1, -1), grounded], dim=1)  # (P, 1+L, W)
        stream = stream + self.positions[:, : stream.shape[1]]
        mask = text["grounded.text_mask"]  # (P, L)
        padding = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], dim=1)  # (P, 1+L) True at padding
        for layer in self.layers:
            stream = layer(stream, src_key_padding_mask=padding)
        return self.head(self.final_norm(stream[:, 0])).squeeze(-1)  # (P,)

    def path_logits(self, image: FeatureBatch, text: FeatureBatch) -> torch.Tensor:
        """Aligned pairs -> the similarity path's logits (P,)."""
        return self.path_scale * (image["path.embedding"] * text["path.embedding"]).sum(-1)

    def score_pairs(self, image: FeatureBatch, text: FeatureBatch) -> torch.Tensor:
        """Aligned batches of B images and B captions -> logits (B,)."""
        logits = self.path_logits(image, text)
        if self.config.fusion and self.fusion_depth > 0:
            logits = logits + self.fusion_logits(image, text)
        return logits

    def forward(self, images: FeatureBatch, texts: FeatureBatch) -> torch.Tensor:
        """Training entry point: aligned cached features -> logits (B,)."""
        return self.score_pairs(self.encode_images(images), self.encode_texts(texts))

    def similarity_matrix(self, image: FeatureBatch, text: FeatureBatch) -> torch.Tensor:
        """The similarity path alone for every image x caption: (Ni, Mt)."""
        return self.path_scale * image["path.embedding"] @ text["path.embedding"].T

    def score_matrix(self, image: FeatureBatch, text: FeatureBatch) -> torch.Tensor:
        """Every image against every caption -> logits (Ni, Mt). Fusion runs one image at a time against chunks of
        captions, the image's features broadcast (never copied per pair)."""
        logits = self.similarity_matrix(image, text)
        if not (self.config.fusion and self.fusion_depth > 0):
            return logits
        text = _trim_text(text)
        num_images, num_texts = logits.shape
        chunk = self.config.max_pairs_per_chunk
        rows = []
        for i in range(num_images):
            one_image = slice_features(image, slice(i, i + 1))
            rows.append(
                torch.cat(
                    [
                        self.fusion_logits(one_image, slice_features(text, slice(s, s + chunk)))
                        for s in range(0, num_texts, chunk)
                    ]
                )
            )
        return logits + torch.stack(rows)

    def alignment_matrix(self, image: FeatureBatch, text: FeatureBatch) -> torch.Tensor:
        """Token-region late interaction for every image x caption (Ni, Mt): the mean over each caption's tokens
        of the token's best cosine over the image's regions. Trains the grounding projections without labels."""
        cosines = torch.einsum("mld,nrd->nmlr", text["grounded.queries"], image["grounded.keys"])
        region_mask = image["grounded.region_mask"][:, None, None, :]  # (Ni, 1, 1, R)
        best = cosines.masked_fill(~region_mask, -1.0).amax(dim=-1)  # (Ni, Mt, L)
        token_mask = text["grounded.text_mask"].float()  # (Mt, L)
        return (best * token_mask).sum(-1) / token_mask.sum(-1).clamp(min=1)  # (Ni, Mt)


def _trim_text(text: FeatureBatch) -> FeatureBatch:
    """Drop the token columns that are padding in every caption of the batch (captions are short)."""
    length = max(1, int(text["grounded.text_mask"].sum(dim=1).max()))
    return {k: (v[:, :length] if k.startswith("grounded.") else v) for k, v in text.items()}


def paths_only(model: GroundedCrossEncoder) -> GroundedCrossEncoder:
    """The same weights with the fusion term removed (a copy; ``model`` is untouched)."""
    config = copy.deepcopy(model.config)
    config.fusion = False
    stripped = GroundedCrossEncoder(config)
    stripped.load_state_dict(model.state_dict())
    return stripped.train(model.training)


def cut_grounded_student(
    teacher: GroundedCrossEncoder, layer_indices: list[int] | None = None
) -> GroundedCrossEncoder:
    """A compressed cross-encoder: the teacher's fusion layers at ``layer_indices`` (default: half, spread, first
    and last kept), everything else copied. The teacher is left untouched."""
    indices = layer_indices or spread_layer_indices(teacher.fusion_depth, max(1, teacher.fusion_depth // 2))
    config = copy.deepcopy(teacher.config)
    config.num_layers = len(indices)
    student = GroundedCrossEncoder(config)
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("layers.")}
    for new_index, old_index in enumerate(indices):
        state.update(
            {f"layers.{new_index}.{k}": v for k, v in teacher.layers[old_index].state_dict().items()}
        )
    student.load_state_dict({k: v.clone() for k, v in state.items()})
    return student
