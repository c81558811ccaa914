"""Serving a dual student from its ONNX export: onnxruntime for the networks, Python for pixels and tokens.

:class:`OnnxDualEncoder` has the query side of :class:`~dcd_itr.models.end_to_end.EndToEnd` for a dual model —
``encode_images`` (PIL images or paths) and ``encode_texts`` (strings) -> ``{"embedding": (B, D)}`` — so the index
build, the retriever and the service take either. Loading checks every file against the manifest's sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dcd_itr.data.images import load_rgb
from dcd_itr.errors import ConfigError, CorruptFileError
from dcd_itr.export.manifest import OUTPUT_NAME, read_export_manifest
from dcd_itr.interfaces import FeatureBatch
from dcd_itr.io_utils import file_sha256

DEFAULT_IMAGE_BATCH = 64  # images per session call: fills the cores without a large memory peak
DEFAULT_TEXT_BATCH = 256  # captions per session call, sorted by length so padding stays small


def _onnxruntime():
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise ConfigError("--runtime onnx needs onnxruntime: pip install 'dcd-itr[onnx]'") from None
    return onnxruntime


def preprocess_images(
    images: list[Image.Image], size: int, mean: list[float], std: list[float], resample: str
) -> np.ndarray:
    """What :meth:`ImageTower.preprocess` does, in numpy: resize, scale to [0, 1], normalise -> (B, 3, S, S)."""
    method = Image.Resampling[resample.upper()]
    arrays = [np.asarray(image.convert("RGB").resize((size, size), method)) for image in images]
    pixels = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)  # (B, 3, S, S)
    mean_array = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std_array = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (pixels - mean_array) / std_array


class OnnxDualEncoder:
    """An ONNX export folder (``dcd export --onnx``) as a dual encoder of raw images and strings."""

    runtime = "onnx"

    def __init__(
        self,
        folder: str | Path,
        device: str = "cpu",  # onnxruntime's CPU provider; "cuda" needs onnxruntime-gpu
        threads: int
        | None = None,  # None -> torch's thread count, so OMP_NUM_THREADS / --threads apply to both
        verify: bool = True,  # sha256 of every file against the manifest (~0.3 s for MiniLM)
    ) -> None:
        onnxruntime = _onnxruntime()
        self.folder = Path(folder)
        self.manifest = read_export_manifest(self.folder)
        self.model_fingerprint: str = self.manifest["model_fingerprint"]
        for side in ("image", "text"):
            path = self.folder / self.manifest[side]["file"]
            if not path.is_file():
                raise CorruptFileError(
                    path, "ONNX file listed in the manifest is missing; re-run dcd export --onnx"
                )
        if verify:
            for name, digest in self.manifest["files"].items():
                path = self.folder / name
                if not path.is_file() or file_sha256(path) != digest:
                    raise CorruptFileError(
                        path, "missing or changed since export (sha256); re-run dcd export --onnx"
                    )
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise ConfigError("--device cuda with --runtime onnx needs onnxruntime-gpu; use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        elif str(device) != "cpu":
            raise ConfigError(f"--runtime onnx runs on cpu or cuda, not {device!r}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1  # one graph at a time; parallelism is inside the operators
        self.image_session = onnxruntime.InferenceSession(
            str(self.folder / self.manifest["image"]["file"]), options, providers=providers
        )
        self.text_session = onnxruntime.InferenceSession(
            str(self.folder / self.manifest["text"]["file"]), options, providers=providers
        )
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(
            str(self.folder / self.manifest["text"]["tokenizer"]), local_files_only=True
        )
        self.text_inputs: list[str] = list(self.manifest["text"]["input_names"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "folder": str(self.folder),
            "quantization": self.manifest.get("quantization"),
        }

    def image_pixels(self, images: list[Image.Image | str | Path]) -> np.ndarray:
        spec = self.manifest["image"]
        pil = [load_rgb(image) if isinstance(image, (str, Path)) else image for image in images]
        return preprocess_images(pil, spec["image_size"], spec["mean"], spec["std"], spec["resample"])

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Strings -> int64 arrays (B, L), padded to the longest text, truncated at the view's length."""
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.manifest["text"]["max_length"],
            return_tensors="np",
        )
        return {name: np.asarray(batch[name], dtype=np.int64) for name in self.text_inputs}

    def encode_images(
        self, images: list[Image.Image | str | Path], batch_size: int = DEFAULT_IMAGE_BATCH
    ) -> FeatureBatch:
        if not images:
            raise ValueError("encode_images needs at least one image")
        parts = []
        for start in range(0, len(images), batch_size):
            pixels = self.image_pixels(images[start : start + batch_size])  # (b, 3, S, S)
            parts.append(self.image_session.run([OUTPUT_NAME], {"pixels": pixels})[0])  # (b, D)
        return {"embedding": torch.from_numpy(np.concatenate(parts))}

    def encode_texts(self, texts: list[str], batch_size: int = DEFAULT_TEXT_BATCH) -> FeatureBatch:
        if not texts:
            raise ValueError("encode_texts needs at least one text")
        tokenized = self.tokenize(texts)  # (N, L) each
        lengths = tokenized["attention_mask"].sum(axis=1)  # (N,)
        order = np.argsort(-lengths, kind="stable")  # longest first: each batch pads to its own longest
        embedding = np.empty((len(texts), self.embed_dim), dtype=np.float32)  # (N, D)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            used = tokenized["attention_mask"][rows].any(axis=0)  # (L,) columns not padding in every row
            feeds = {name: np.ascontiguousarray(value[rows][:, used]) for name, value in tokenized.items()}
            embedding[rows] = self.text_session.run([OUTPUT_NAME], feeds)[0]
        return {"embedding": torch.from_numpy(embedding)}
