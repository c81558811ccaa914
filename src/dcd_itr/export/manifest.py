"""The manifest of an ONNX export folder (``onnx_manifest.json``), readable without onnxruntime.

Layout written by ``dcd export --onnx MODEL_DIR OUT_DIR``::

    OUT_DIR/image.onnx           pixels (B, 3, S, S) float32 -> output_embedding (B, D): image tower + head
    OUT_DIR/text.onnx            tokens (B, L) int64 -> output_embedding (B, D): text encoder + text head
    OUT_DIR/tokenizer/           the text tower's Hugging Face tokenizer (tokenization stays in Python)
    OUT_DIR/onnx_manifest.json   written last: model fingerprint, opset, input names, sha256 of every file

The model fingerprint is the sha256 of the source ``model.safetensors`` (what an index records), so an index built
with the PyTorch model can be searched with its export and the other way round; a different model is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dcd_itr.errors import ConfigError, CorruptFileError

MANIFEST_FILE = "onnx_manifest.json"
FORMAT_VERSION = 1
IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
TOKENIZER_DIR = "tokenizer"
# not "embedding": the exporter names the graph's aten.embedding node that, and ONNX names must be unique
OUTPUT_NAME = "output_embedding"
_REQUIRED = {
    "format": int,
    "model_fingerprint": str,
    "opset": int,
    "embed_dim": int,
    "image": dict,
    "text": dict,
    "files": dict,
}
_PATH_KEYS = {
    "image": {
        "file": str,
        "input_names": list,
        "image_size": int,
        "mean": list,
        "std": list,
        "resample": str,
    },
    "text": {"file": str, "input_names": list, "max_length": int, "tokenizer": str},
}


def is_onnx_export(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST_FILE).is_file()


def read_export_manifest(folder: str | Path) -> dict[str, Any]:
    """``folder/onnx_manifest.json``, checked for the fields a reader relies on (else a clear DcdError)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        if (Path(folder) / "model.safetensors").is_file():
            raise ConfigError(
                f"{folder} is a PyTorch model folder, not an ONNX export: run `dcd export --onnx {folder} OUT_DIR` "
                "and pass OUT_DIR with --runtime onnx"
            )
        raise ConfigError(f"{path}: ONNX export manifest not found (make one with `dcd export --onnx`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:
        raise CorruptFileError(path, f"ONNX manifest is not valid JSON ({error})") from None
    wrong = [
        key
        for key, kind in _REQUIRED.items()
        if not isinstance(manifest, dict) or type(manifest.get(key)) is not kind
    ]
    if not wrong:
        wrong = [
            f"{side}.{key}"
            for side, keys in _PATH_KEYS.items()
            for key, kind in keys.items()
            if type(manifest[side].get(key)) is not kind
        ]
    if wrong:
        raise CorruptFileError(path, f"not an ONNX export manifest (bad or missing {wrong})")
    if manifest["format"] != FORMAT_VERSION:
        raise CorruptFileError(
            path, f"ONNX export format {manifest['format']}, this version reads {FORMAT_VERSION}"
        )
    return manifest


def exported_model_fingerprint(folder: str | Path) -> str:
    """The fingerprint of the model an export folder was made from (sha256 of its ``model.safetensors``)."""
    return read_export_manifest(folder)["model_fingerprint"]
