"""Export a dual student to ONNX: the image path (tower + head) and the text path (encoder + head).

Uses torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, needs ``onnx`` and ``onnxscript``): it
runs offline and keeps the Hugging Face attention masks dynamic in batch and sequence length; the older
TorchScript exporter bakes the traced sequence length into transformers 5's mask code (wrong embeddings for any
other length). Every export is checked against PyTorch on inputs of other shapes before the manifest is written;
see :mod:`dcd_itr.export.manifest` for the folder layout.

``int8=True`` applies onnxruntime's dynamic quantisation (per channel) to the MatMul/Gemm weights (the transformer
and the heads); convolutions stay float32 (onnxruntime's ConvInteger kernels are slower than its float convolutions).
"""

from __future__ import annotations

import importlib.metadata
import io
import logging
import shutil
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from dcd_itr.encoders.base import ImageTower, TextTower
from dcd_itr.errors import ConfigError, DcdError
from dcd_itr.export.manifest import (
    FORMAT_VERSION,
    IMAGE_FILE,
    MANIFEST_FILE,
    OUTPUT_NAME,
    TEXT_FILE,
    TOKENIZER_DIR,
    read_export_manifest,
)
from dcd_itr.io_utils import atomic_path, file_sha256, write_json_atomic

DEFAULT_OPSET = 20  # the dynamo exporter's native opset in torch 2.13; onnxruntime >= 1.17 runs it
MIN_COSINE = 0.999  # exported float32 embeddings must match PyTorch this closely (issue 15's bar)
MIN_COSINE_INT8 = 0.9  # int8 moves MiniLM embeddings to cosine ~0.94-0.99 (per channel); below: broken
QUANTIZED_OPS = ["MatMul", "Gemm"]  # see the module docstring: convolutions stay float32
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what BERT-style tokenizers return


class ExportError(DcdError):
    """The exported graph does not reproduce the PyTorch model (or the exporter failed)."""


def require_onnx_export() -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            raise ConfigError(
                f"ONNX export needs {module!r}: pip install 'dcd-itr[onnx]' (onnx, onnxscript, onnxruntime)"
            ) from None


class ImagePath(nn.Module):
    """Normalised pixels (B, 3, S, S) -> L2-normalised embedding (B, D): the image tower, then the image head."""

    def __init__(self, tower: ImageTower, model: nn.Module, view: str) -> None:
        super().__init__()
        self.tower, self.model, self.view = tower, model, view

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = {f"{self.view}.{name}": value for name, value in self.tower(pixels).items()}
        return self.model.encode_images(features)["embedding"]  # (B, D)


class TextPath(nn.Module):
    """Tokenizer tensors (B, L) -> L2-normalised embedding (B, D): the text encoder, then the text head."""

    def __init__(self, tower: TextTower, model: nn.Module, view: str) -> None:
        super().__init__()
        self.tower, self.model, self.view = tower, model, view

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        tokenized = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            tokenized["token_type_ids"] = token_type_ids
        features = {f"{self.view}.{name}": value for name, value in self.tower(**tokenized).items()}
        return self.model.encode_texts(features)["embedding"]  # (B, D)


def _export(module: nn.Module, args: tuple, input_names: list[str], path: Path, opset: int) -> None:
    dynamic = {name: {0: "batch"} for name in input_names}
    if input_names[0] != "pixels":  # text: the sequence length varies too
        dynamic = {name: {0: "batch", 1: "sequence"} for name in input_names}
    dynamic[OUTPUT_NAME] = {0: "batch"}
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" lines: irrelevant here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module.eval(),
                args,
                str(path),
                input_names=input_names,
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic,
                opset_version=opset,
                dynamo=True,
                external_data=False,  # one self-contained file per path (both are far below ONNX's 2 GB cap)
            )
        except Exception as error:  # the exporter raises many types; name the path that failed
            raise ExportError(
                f"torch.onnx.export failed for {path.name}: {type(error).__name__}: {error}"
            ) from None
        finally:
            quiet.setLevel(level)


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # the check is tiny; do not spin up a thread pool
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def min_cosine(expected: torch.Tensor, actual: np.ndarray) -> float:
    """Smallest row-wise cosine between PyTorch embeddings (B, D) and exported ones (B, D)."""
    actual_tensor = torch.from_numpy(np.asarray(actual, dtype=np.float32))
    return float(torch.nn.functional.cosine_similarity(expected.float(), actual_tensor, dim=-1).min())


def _check(path: Path, module: nn.Module, inputs: dict[str, torch.Tensor], floor: float) -> float:
    with torch.inference_mode():
        expected = module(**inputs)  # (B, D)
    got = _session(path).run([OUTPUT_NAME], {k: v.numpy() for k, v in inputs.items()})[0]
    cosine = min_cosine(expected, got)
    if not cosine >= floor:
        raise ExportError(
            f"{path.name}: exported embeddings differ from PyTorch (min cosine {cosine:.5f} < {floor})"
        )
    return cosine


def _quantize(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The exporter's intermediate shape annotations can disagree with the quantiser's own shape inference
    # ("Inferred shape and existing shape differ"); drop them and let it infer.
    graph = onnx.load(str(source))
    del graph.graph.value_info[:]
    with atomic_path(target) as temp:
        root, level = logging.getLogger(), logging.getLogger().level
        root.setLevel(logging.ERROR)  # "consider pre-processing": shape inference runs inside anyway
        try:  # per channel: min cosine to float32 0.94 instead of 0.90 on MiniLM captions
            quantize_dynamic(
                graph,
                str(temp),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=QUANTIZED_OPS,
                per_channel=True,
            )
        finally:
            root.setLevel(level)


def _probe_images(size: int, count: int) -> list[Image.Image]:
    generator = np.random.default_rng(0)  # fixed: the check must be reproducible
    return [
        Image.fromarray(generator.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)
    ]


PROBE_TEXTS = ["a red square", "two small dogs play with a ball on the grass", "the colour blue", "x"]


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime", "transformers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def export_dual_onnx(
    model_dir: str | Path,
    out: str | Path,
    opset: int = DEFAULT_OPSET,  # see the constant's reason
    int8: bool = False,  # dynamic int8 quantisation of MatMul/Gemm weights
) -> dict[str, Any]:
    """Write ``out`` (see :mod:`dcd_itr.export.manifest`) from the dual model in ``model_dir``; returns the manifest."""
    from dcd_itr.models.end_to_end import EndToEnd  # local: builds towers, pulls in transformers
    from dcd_itr.models.registry import weights_fingerprint
    from dcd_itr.search.gallery import is_dual_encoder

    require_onnx_export()
    model_dir, out = Path(model_dir), Path(out)
    fingerprint = weights_fingerprint(model_dir)
    encoder = EndToEnd.load(model_dir)
    model = encoder.model
    if not is_dual_encoder(model):
        raise ConfigError(f"{model_dir} is not a dual encoder; only dual students export to ONNX")
    if len(encoder.image_towers) != 1 or len(encoder.text_towers) != 1:
        raise ConfigError(f"{model_dir}: ONNX export handles one image view and one text view")
    (image_view, image_tower), (text_view, text_tower) = (
        *encoder.image_towers.items(),
        *encoder.text_towers.items(),
    )
    tokenizer = getattr(text_tower, "tokenizer", None)
    if not hasattr(tokenizer, "save_pretrained"):
        raise ConfigError(
            f"text tower {text_view!r} has no Hugging Face tokenizer to save beside the ONNX graph"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until the manifest is written again
    image_path, text_path = ImagePath(image_tower, model, image_view), TextPath(text_tower, model, text_view)

    # Trace at batch 2 at full length; check at other batch sizes and lengths (dynamic axes really dynamic).
    trace_pixels = image_tower.preprocess(_probe_images(image_tower.image_size, 2))
    check_pixels = image_tower.preprocess(_probe_images(image_tower.image_size, 3))
    trace_text = text_tower.tokenize(PROBE_TEXTS[:2], pad_to_max_length=True)
    check_text = text_tower.tokenize(PROBE_TEXTS[1:])
    input_names = [name for name in TEXT_INPUTS if name in trace_text]
    if set(trace_text) - set(input_names):
        raise ConfigError(f"tokenizer returns {sorted(trace_text)}; ONNX export handles {list(TEXT_INPUTS)}")
    trace_text = {name: trace_text[name].long() for name in input_names}
    check_text = {name: check_text[name].long() for name in input_names}
    cosines = {}
    for file, module, args, names, check in (
        (IMAGE_FILE, image_path, (trace_pixels,), ["pixels"], {"pixels": check_pixels}),
        (TEXT_FILE, text_path, tuple(trace_text.values()), input_names, check_text),
    ):
        with atomic_path(out / file) as temp:
            _export(module, args, names, temp, opset)
        cosines[file] = _check(out / file, module, check, MIN_COSINE)
    tokenizer_dir = out / TOKENIZER_DIR
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    tokenizer.save_pretrained(str(tokenizer_dir))
    files = sorted(p for p in [out / IMAGE_FILE, out / TEXT_FILE, *tokenizer_dir.rglob("*")] if p.is_file())
    with torch.inference_mode():
        embed_dim = int(text_path(**check_text).shape[-1])
    manifest = {
        "format": FORMAT_VERSION,
        "model_dir": str(model_dir.resolve()),
        "model_fingerprint": fingerprint,
        "opset": opset,
        "quantization": None,
        "embed_dim": embed_dim,
        "image": {
            "file": IMAGE_FILE,
            "view": image_view,
            "input_names": ["pixels"],
            "output_name": OUTPUT_NAME,
            "image_size": image_tower.image_size,
            "mean": list(image_tower.mean),
            "std": list(image_tower.std),
            "resample": image_tower.resample.name.lower(),
            "tower": image_tower.fingerprint(),
        },
        "text": {
            "file": TEXT_FILE,
            "view": text_view,
            "input_names": input_names,
            "output_name": OUTPUT_NAME,
            "max_length": text_tower.max_length,
            "tokenizer": TOKENIZER_DIR,
            "tower": text_tower.fingerprint(),
        },
        "check_min_cosine": cosines,
        "files": {str(p.relative_to(out)): file_sha256(p) for p in files},
        "versions": _versions(),
    }
    write_json_atomic(out / MANIFEST_FILE, manifest)
    return quantize_onnx_export(out, out) if int8 else manifest


def _probe_embeddings(folder: Path) -> dict[str, np.ndarray]:
    from dcd_itr.export.onnx_runtime import OnnxDualEncoder

    encoder = OnnxDualEncoder(folder, threads=1)
    size = encoder.manifest["image"]["image_size"]
    return {
        IMAGE_FILE: encoder.encode_images(_probe_images(size, 3))["embedding"],
        TEXT_FILE: encoder.encode_texts(PROBE_TEXTS)["embedding"],
    }


def quantize_onnx_export(source: str | Path, out: str | Path) -> dict[str, Any]:
    """Dynamic int8 quantisation of a float32 export folder into ``out`` (may be ``source`` itself), checked
    against the float32 graphs (min cosine >= MIN_COSINE_INT8); returns the new manifest."""
    require_onnx_export()
    source, out = Path(source), Path(out)
    manifest = read_export_manifest(source)
    if manifest.get("quantization"):
        raise ConfigError(
            f"{source} is already quantised ({manifest['quantization']}); quantise a float32 export"
        )
    reference = _probe_embeddings(source)  # before any file of an in-place export changes
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until the manifest is written again
    if out.resolve() != source.resolve():
        shutil.rmtree(out / TOKENIZER_DIR, ignore_errors=True)
        shutil.copytree(source / TOKENIZER_DIR, out / TOKENIZER_DIR)
    for file in (IMAGE_FILE, TEXT_FILE):
        _quantize(source / file, out / file)
    files = {name: file_sha256(out / name) for name in manifest["files"]}
    quantized = {**manifest, "quantization": "int8-dynamic", "files": files}
    write_json_atomic(out / MANIFEST_FILE, quantized)
    cosines = {}
    for file, embedding in _probe_embeddings(out).items():
        cosines[file] = min_cosine(reference[file], embedding.numpy())
        if not cosines[file] >= MIN_COSINE_INT8:
            (out / MANIFEST_FILE).unlink()
            raise ExportError(
                f"{out / file}: int8 embeddings differ from float32 (min cosine {cosines[file]:.4f})"
            )
    quantized["check_min_cosine"] = {f"{name} (int8 vs float32)": value for name, value in cosines.items()}
    write_json_atomic(out / MANIFEST_FILE, quantized)
    return quantized
