"""Distil your own cross-encoder into a dual-encoder student: any class with score(images, captions)."""

import os

from PIL import ImageColor

from dcd_itr.features import cache_features
from dcd_itr.models.dual import DualConfig
from dcd_itr.tasks.distill import DistillConfig, distill
from dcd_itr.train import TrainConfig

DATA = os.environ.get("DCD_DATA", "data/emoji")  # a Karpathy JSON, JSONL or CSV dataset, or its folder
WORK = os.environ.get("DCD_WORK", "results/own_teacher")


class MyTeacher:
    """Your cross-encoder: score aligned lists of PIL images and caption strings, higher = better match."""

    teacher_id = "mean-colour-v1"  # change it whenever the scores change: it keys the teacher-score cache

    def score(self, images, captions):
        # A stand-in for a real model (load yours in __init__): does the caption name the image's mean colour?
        scores = []
        for image, caption in zip(images, captions, strict=True):
            mean = image.convert("RGB").resize((1, 1)).getpixel((0, 0))
            named = [ImageColor.getrgb(w) for w in caption.lower().split() if w in ImageColor.colormap]
            distances = [sum(abs(a - b) for a, b in zip(mean, rgb, strict=True)) for rgb in named]
            scores.append(-min(distances, default=765) / 255)
        return scores


if __name__ == "__main__":  # distill loads MyTeacher from this file (python:FILE:NAME) without rerunning this
    student = DualConfig()  # frozen EfficientNet-Lite0 (128 px) and MiniLM towers, trained projection heads
    cache_features(DATA, f"{WORK}/features", [student.image_view], [student.text_view], progress=False)
    config = DistillConfig(
        data=DATA,
        features=f"{WORK}/features",
        out=f"{WORK}/student",
        teacher=f"python:{os.path.abspath(__file__)}:MyTeacher",
        teacher_cache=f"{WORK}/teacher_scores",
        dual=student,
        pool_size=4,  # small pools keep this quick on tiny data; the reference uses 16 (COCO) or 64
        num_candidates=3,
        train=TrainConfig(epochs=3, lr=1e-3),
    )
    result = distill(config, progress=False)
    print(f"student in {WORK}/student/best, val RSUM {result.best_metrics['rsum']:.1f}")
