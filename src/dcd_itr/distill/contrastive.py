"""Contrastive and ranking losses used to train duals and cross-encoders directly (no teacher)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SymmetricInfoNCELoss(nn.Module):
    """In-batch symmetric InfoNCE over B aligned (image, caption) pairs.

    With logits S (B, B), S_ij = scale * <image_i, text_j>, and targets on the diagonal::

        L = 1/2 * [ CE(S, diag) + CE(S^T, diag) ]

    ``excluded`` (B, B) bool, optional: pairs that are no negatives (caption j text-identical to a caption of
    image i, or of the same image; see :mod:`dcd_itr.data.same_text`); their logits are set to −inf off the
    diagonal, so they count in neither direction. Returns ``{"loss", "image_to_text", "text_to_image"}``.
    """

    def forward(self, logits: torch.Tensor, excluded: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
            raise ValueError(f"expected square logits (B, B), got {tuple(logits.shape)}")
        if excluded is not None:
            if excluded.shape != logits.shape:
                raise ValueError(f"excluded {tuple(excluded.shape)} must match logits {tuple(logits.shape)}")
            diagonal = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(excluded & ~diagonal, float("-inf"))  # (B, B)
        targets = torch.arange(logits.shape[0], device=logits.device)
        image_to_text = F.cross_entropy(logits, targets)
        text_to_image = F.cross_entropy(logits.T, targets)
        return {
            "loss": 0.5 * (image_to_text + text_to_image),
            "image_to_text": image_to_text.detach(),
            "text_to_image": text_to_image.detach(),
        }


class ListwiseRankingLoss(nn.Module):
    """Softmax ranking loss over candidate lists whose positive is at index 0.

    logits (B, K)::

        L = mean_i CE(logits_i, 0) = mean_i [ -logits_i0 + log sum_j exp(logits_ij) ]
    """

    def forward(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"expected logits (B, K) with K >= 2, got {tuple(logits.shape)}")
        targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(dim=1) == 0).float().mean()
        return {"loss": loss, "top1": accuracy.detach()}
