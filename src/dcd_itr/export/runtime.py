"""Which runtime embeds queries and galleries: PyTorch (the model folder) or ONNX Runtime (an export folder).

``load_dual_encoder(folder, runtime)`` returns an object with ``encode_images`` / ``encode_texts`` ->
``{"embedding": (B, D)}`` and a ``model_fingerprint``, the sha256 of the weights it came from (what an index
records), so the index build, the retriever and the service need not know which runtime they hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dcd_itr.errors import ConfigError
from dcd_itr.export.manifest import is_onnx_export

RUNTIMES = ("torch", "onnx")
DEFAULT_RUNTIME = "torch"  # needs nothing beyond the core dependencies


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown --runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    return runtime


def load_dual_encoder(folder: str | Path, runtime: str = DEFAULT_RUNTIME, device: str = "cpu") -> Any:
    """A dual encoder of raw images and strings from a model folder (torch) or an ONNX export folder (onnx)."""
    check_runtime(runtime)
    folder = Path(folder)
    if runtime == "onnx":
        from dcd_itr.export.onnx_runtime import OnnxDualEncoder

        return OnnxDualEncoder(folder, device)
    if is_onnx_export(folder) and not (folder / "model.safetensors").exists():
        raise ConfigError(
            f"{folder} is an ONNX export: use --runtime onnx (or give the PyTorch model folder)"
        )
    from dcd_itr.models.end_to_end import EndToEnd
    from dcd_itr.models.registry import weights_fingerprint
    from dcd_itr.search.gallery import is_dual_encoder

    encoder = EndToEnd.load(folder, device)
    if not is_dual_encoder(encoder.model):
        raise ConfigError(f"{folder} is not a dual encoder")
    encoder.model_fingerprint = weights_fingerprint(folder)
    encoder.runtime = "torch"
    return encoder
