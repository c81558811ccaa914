"""CPU cost of each part of the scenes demo's features stage, per item, on a sample of the train split.

    python benchmarks/demo_features_cost.py --data data/scenes [--items 256] [--threads 1]

Prints, for PNG decoding, the whole-image view (Lite0 @ 128 px), the pixel detector, the crops, the region view
(Lite0 @ 96 px per crop) and MiniLM @ 40 tokens: wall and CPU (user + system) seconds per item at tower batch
sizes 32 (the cache's) and 128. Multiply by the split sizes for the stage's CPU cost; the numbers in the README
came from --threads 1 on an idle core.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from typing import Any

import torch

from dcd_itr.data.image_check import load_record_image
from dcd_itr.data.loading import load_split
from dcd_itr.encoders import build_image_tower, build_text_tower
from dcd_itr.encoders.regions import crop_square
from dcd_itr.encoders.views import parse_view


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(label: str, work: Callable[[], Any], count: int) -> Any:
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = work()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    print(
        f"{label:34s} n={count:5d}  CPU {1000 * cpu / count:6.2f} ms/item  wall {1000 * wall / count:6.2f} ms/item"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/scenes", help="a scenes build (default %(default)s)")
    parser.add_argument(
        "--items", type=int, default=256, help="train images sampled (captions: twice as many)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = load_split(args.data, "train")
    count = min(args.items, split.num_images)
    images = timed(
        "PNG decode", lambda: [load_record_image(split, row).convert("RGB") for row in range(count)], count
    )
    whole = build_image_tower(*parse_view("efficientnet-lite0@128"))
    regions = build_image_tower(*parse_view("regions-efficientnet-lite0@96"))
    whole.encode(images[:8], batch_size=32)  # warm-up: first-call allocations are not the steady cost
    for batch in (32, 128):
        timed(
            f"Lite0@128 whole image (batch {batch})",
            lambda b=batch: whole.encode(images, batch_size=b),
            count,
        )
    boxes = timed("detector", lambda: [regions.detect(image) for image in images], count)
    crops = timed(
        "crops",
        lambda: [
            crop_square(im, box, regions.margin)
            for im, found in zip(images, boxes, strict=True)
            for box in found
        ],
        count,
    )
    print(f"regions per image: {len(crops) / count:.2f}")
    timed("region view, all of it (batch 32)", lambda: regions.encode(images, batch_size=32), count)
    for batch in (32, 128):
        timed(
            f"Lite0@96 per crop (batch {batch})",
            lambda b=batch: regions.inner.encode(crops, batch_size=b),
            len(crops),
        )
    name, length = parse_view("minilm-l6@40", 40)
    text = build_text_tower(name, max_length=length)
    captions = list(split.captions[: 2 * count])
    text.encode(captions[:8], batch_size=32, pad_to_max_length=True)
    for batch in (32, 128):
        timed(
            f"MiniLM@40 per caption (batch {batch})",
            lambda b=batch: text.encode(captions, batch_size=b, pad_to_max_length=True),
            len(captions),
        )


if __name__ == "__main__":
    main()
