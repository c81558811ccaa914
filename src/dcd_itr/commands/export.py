"""`dcd export --onnx MODEL_DIR OUT_DIR`: the dual student's image and text paths as ONNX graphs for onnxruntime."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dcd_itr.errors import ConfigError


def export_model(
    model_dir: Path,
    out: Path,
    onnx: bool = True,  # the only format so far; the flag keeps room for others
    opset: int | None = None,  # None -> the exporter default (dcd_itr.export.onnx_export.DEFAULT_OPSET)
    int8: bool = False,  # dynamic int8 quantisation of the MatMul/Gemm weights
) -> dict[str, Any]:
    """Export, print a one-line summary and the per-path check, and return the manifest."""
    if not onnx:
        raise ConfigError("choose an export format: --onnx")
    from dcd_itr.export.onnx_export import DEFAULT_OPSET, export_dual_onnx

    if opset is not None and opset < 17:
        raise ConfigError(f"--opset {opset}: the dynamo exporter needs opset >= 17")
    manifest = export_dual_onnx(model_dir, out, opset or DEFAULT_OPSET, int8)
    kind = "int8-dynamic" if int8 else "float32"
    print(f"{out}: {kind} ONNX export of {model_dir} (opset {manifest['opset']}, {manifest['embed_dim']}-d)")
    print(json.dumps({"min_cosine_vs_torch": manifest["check_min_cosine"]}))
    return manifest


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a dual student to ONNX for onnxruntime (--runtime onnx in index build / search / serve)",
        description="Writes OUT_DIR/image.onnx (pixels -> embedding), text.onnx (token ids -> embedding), the "
        "tokenizer, and onnx_manifest.json (model fingerprint, opset, input names, sha256 of each file). Each "
        "graph is checked against PyTorch (min cosine >= 0.999, >= 0.9 against float32 with --int8) before the manifest is written.",
    )
    parser.add_argument("--onnx", action="store_true", help="export to ONNX (the only format)")
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="dual model folder")
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="export folder")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: 20, the exporter's own)")
    parser.add_argument(
        "--int8", action="store_true", help="dynamic int8 quantisation of MatMul/Gemm weights"
    )
    parser.set_defaults(handler=lambda a: export_model(a.model_dir, a.out, a.onnx, a.opset, a.int8))
