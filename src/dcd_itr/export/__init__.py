"""Serving formats for trained students: ONNX export of a dual student and the runtimes that read it.

>>> export_dual_onnx("runs/dual/best", "runs/dual/onnx")  # doctest: +SKIP
>>> load_dual_encoder("runs/dual/onnx", runtime="onnx").encode_texts(["a red square"])["embedding"].shape  # doctest: +SKIP
torch.Size([1, 256])
"""

from dcd_itr.export.manifest import MANIFEST_FILE, is_onnx_export, read_export_manifest
from dcd_itr.export.runtime import DEFAULT_RUNTIME, RUNTIMES, check_runtime, load_dual_encoder

__all__ = [
    "DEFAULT_RUNTIME",
    "MANIFEST_FILE",
    "RUNTIMES",
    "check_runtime",
    "export_dual_onnx",
    "is_onnx_export",
    "load_dual_encoder",
    "read_export_manifest",
]


def export_dual_onnx(*args, **kwargs):
    """See :func:`dcd_itr.export.onnx_export.export_dual_onnx` (imported lazily: it pulls in the exporter)."""
    from dcd_itr.export.onnx_export import export_dual_onnx as export

    return export(*args, **kwargs)
