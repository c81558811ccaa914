"""Memory bound of dual-encoder evaluation at COCO-5K scale (evaluation issue): rank_dual on 5,000 images x
25,000 captions of synthetic unit vectors, blockwise, against the size of the full score matrix.

    python benchmarks/eval_memory.py [--images 5000] [--captions 25000] [--dim 256] [--block-size 1024]

Each configuration runs in a fresh subprocess and reports its peak resident memory (ru_maxrss) above the
process's baseline after the embeddings are allocated; the full N x M float32 matrix is what a naive evaluation
would hold. Writes benchmarks/results/eval_memory.json and eval_memory.md. Synthetic data: memory does not
depend on the values, only on the shapes.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from dcd_itr.io_utils import write_json_atomic, write_text_atomic

CHILD = """
import resource, sys, time, json, torch
from dcd_itr.metrics import rank_dual
images, captions, dim, block = (int(v) for v in sys.argv[1:5])
torch.manual_seed(0)
image_embeddings = torch.nn.functional.normalize(torch.randn(images, dim), dim=1)
text_embeddings = torch.nn.functional.normalize(torch.randn(captions, dim), dim=1)
caption_to_image = torch.arange(captions) % images
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
metrics = rank_dual(image_embeddings, text_embeddings, caption_to_image, block_size=block)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_peak_mib": (peak - before) / 1024, "seconds": seconds, "rsum": metrics["rsum"]}))
"""


def measure(images: int, captions: int, dim: int, block: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(images), str(captions), str(dim), str(block)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions", type=int, default=25000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--block-size", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    full_mib = args.images * args.captions * 4 / 2**20
    rows = {}
    for block in args.block_size:
        rows[block] = measure(args.images, args.captions, args.dim, block)
        # the largest block either direction holds: block x max(N, M) float32 scores (+ masks of that shape)
        rows[block]["block_scores_mib"] = block * max(args.images, args.captions) * 4 / 2**20
        print(block, rows[block], flush=True)
    lines = [
        f"Dual-encoder evaluation of {args.images:,} x {args.captions:,} (dim {args.dim}, synthetic), "
        f"{platform.platform()}, {time.strftime('%Y-%m-%d')}. Full score matrix: {full_mib:,.0f} MiB.",
        "",
        "| block size | one block's scores (MiB) | peak memory above embeddings (MiB) | time (s) |",
        "|---:|---:|---:|---:|",
    ]
    for block, row in rows.items():
        lines.append(
            f"| {block} | {row['block_scores_mib']:.0f} | {row['extra_peak_mib']:.0f} | {row['seconds']:.1f} |"
        )
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        args.results / "eval_memory.json",
        {"full_matrix_mib": full_mib, "rows": rows, "machine": platform.platform()},
    )
    write_text_atomic(args.results / "eval_memory.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
