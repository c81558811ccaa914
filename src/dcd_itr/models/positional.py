"""Position-aware pooling for the dual encoder: where a thing is, and which word comes first, reach the vector.

A pooled tower vector (the bag dual's input) is a mean over the image grid or the caption's tokens, so two
scenes with the same objects in swapped places, or "a cat left of a pizza" and "a pizza left of a cat", differ
only by what the frozen tower happened to leak. :class:`AttentionPoolEncoder` reads the token states instead:

    x_n    = Linear(LayerNorm(token_n)) + position_n            (B, N, W)   2-D grid or 1-D sequence positions
    x      = TransformerEncoderLayer^L(x, padding mask)          (B, N, W)   content and position mix
    slot_q = MultiheadAttention(query_q, x, x)                   (B, Q, W)   Q learned queries
    out    = Linear(LayerNorm(concat_q slot_q))                  (B, D)
           [+ MLP(pooled)                                        (B, D)   with ``pooled_path``: the bag's input]

The Q slots are concatenated, not averaged, so each query can specialise (e.g. one per quadrant of a 2x2 scene,
or subject / object of a relation) and the dot product of two such vectors compares slot with slot. The model is
still a dual: each side is encoded alone, so embeddings can be cached and indexed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dcd_itr.errors import ConfigError


@dataclass
class AttentionPoolConfig:
    image_token_dim: int = 320  # Lite0/1 last-block channels (Lite2: 352): the cached grid tokens
    width: int = 256  # token width inside the pooler: as wide as the embedding, small enough for 1 CPU thread
    layers: int = 1  # transformer layers before pooling: one lets each token see its neighbours and position
    heads: int = 4  # attention heads of those layers and of the pooling
    queries: int = 4  # learned pooling queries, concatenated: one per cell of a 2x2 scene can be learned
    max_grid_side: int = 16  # largest image grid (side) with a position: Lite0 at 512 px
    max_text_tokens: int = 64  # longest caption (tokens) with a position: above the 40-token MiniLM view
    # add an MLP over the tower's pooled vector (what the bag dual reads): recognition from the first steps,
    # while the slots learn where things are
    pooled_path: bool = False
    pooled_hidden: int = 512  # the pooled path's MLP width


class AttentionPoolEncoder(nn.Module):
    """Tokens (B, N, C) + mask (B, N) -> (B, embed_dim), sensitive to token positions (see the module doc).

    ``positions="grid"``: N must be a square h*w (row-major, as the image towers flatten), or h*w + 1 with a
    leading summary token (a ViT's CLS); each grid token gets a learned row embedding plus a learned column
    embedding, the summary token one of its own. ``positions="sequence"``: a learned embedding per
    index. Padding (mask False) is ignored; right padding beyond the batch's longest row is trimmed first, which
    leaves every output unchanged.
    """

    def __init__(
        self,
        in_dim: int,
        embed_dim: int,
        config: AttentionPoolConfig,
        positions: str,
        dropout: float,
        pooled_dim: int | None = None,  # width of the pooled vector read by ``config.pooled_path``
    ) -> None:
        super().__init__()
        if positions not in ("grid", "sequence"):
            raise ConfigError(f"positions must be 'grid' or 'sequence', got {positions!r}")
        if config.width % config.heads:
            raise ConfigError(f"attention width {config.width} is not divisible by heads {config.heads}")
        self.positions, self.config = positions, config
        width = config.width
        self.input = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, width))
        if positions == "grid":
            self.row_embedding = nn.Parameter(torch.randn(config.max_grid_side, width) * 0.02)
            self.column_embedding = nn.Parameter(torch.randn(config.max_grid_side, width) * 0.02)
            self.summary_embedding = nn.Parameter(torch.randn(1, width) * 0.02)
        else:
            self.index_embedding = nn.Parameter(torch.randn(config.max_text_tokens, width) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, config.heads, 2 * width, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(config.layers)
        )
        self.token_norm = nn.LayerNorm(width)
        self.queries = nn.Parameter(torch.randn(config.queries, width) * 0.02)
        self.pool = nn.MultiheadAttention(width, config.heads, dropout=dropout, batch_first=True)
        self.pooled_head = None
        if config.pooled_path:
            if pooled_dim is None:
                raise ConfigError("attention.pooled_path needs the pooled vector's width")
            self.pooled_head = nn.Sequential(
                nn.LayerNorm(pooled_dim),
                nn.Linear(pooled_dim, config.pooled_hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(config.pooled_hidden, embed_dim),
            )
        self.output = nn.Sequential(
            nn.LayerNorm(config.queries * width), nn.Linear(config.queries * width, embed_dim)
        )

    def position_embedding(self, num_tokens: int) -> torch.Tensor:
        """(N, W): row + column embeddings of a row-major square grid, or one embedding per sequence index."""
        if self.positions == "sequence":
            if num_tokens > self.config.max_text_tokens:
                raise ConfigError(
                    f"{num_tokens} text tokens exceed attention max_text_tokens={self.config.max_text_tokens}"
                )
            return self.index_embedding[:num_tokens]
        side = math.isqrt(num_tokens)
        summary = num_tokens - side * side  # 1 for a leading CLS token
        if summary > 1 or side > self.config.max_grid_side:
            raise ConfigError(
                f"{num_tokens} image tokens are not a square grid of side <= {self.config.max_grid_side} "
                "(with at most one leading summary token)"
            )
        rows = self.row_embedding[:side, None, :].expand(side, side, -1)  # (h, w, W)
        columns = self.column_embedding[None, :side, :].expand(side, side, -1)  # (h, w, W)
        grid = (rows + columns).reshape(side * side, -1)  # (h*w, W)
        return torch.cat([self.summary_embedding[:summary], grid])  # (N, W)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor | None = None
    ) -> torch.Tensor:
        """tokens (B, N, C), mask (B, N), pooled (B, P) when ``pooled_path`` -> (B, embed_dim)."""
        mask = mask.bool()
        if self.positions == "sequence":  # right padding past the longest row carries nothing
            length = int(mask.sum(dim=1).max().clamp(min=1))
            tokens, mask = tokens[:, :length], mask[:, :length]  # (B, L, C), (B, L)
        padding = ~mask  # (B, N), True where ignored
        x = self.input(tokens) + self.position_embedding(tokens.shape[1])  # (B, N, W)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)  # (B, N, W)
        x = self.token_norm(x)
        queries = self.queries.expand(x.shape[0], -1, -1)  # (B, Q, W)
        slots, _ = self.pool(queries, x, x, key_padding_mask=padding, need_weights=False)  # (B, Q, W)
        out = self.output(slots.flatten(1))  # (B, embed_dim)
        return out if self.pooled_head is None else out + self.pooled_head(pooled)
