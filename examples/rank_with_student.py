"""Rank images and captions with a distilled dual-encoder student."""

import os
from pathlib import Path

from dcd_itr.models.end_to_end import EndToEnd

STUDENT = os.environ.get("DCD_STUDENT", "results/demo/dcd_dual/best")  # a folder written by dcd distill
IMAGES = sorted(Path(os.environ.get("DCD_IMAGES", "data/emoji/images")).glob("*.png"))[:200]
CAPTIONS = ["red heart", "smiling face with sunglasses", "dog face"]

student = EndToEnd.load(STUDENT)  # the trained heads behind the frozen towers their views name
images = student.encode_images(IMAGES)["embedding"]  # (N, D), unit-length rows
captions = student.encode_texts(CAPTIONS)["embedding"]  # (M, D)
scores = captions @ images.T  # (M, N): cosine similarity, higher = better match
for caption, row in zip(CAPTIONS, scores, strict=True):
    best = row.topk(min(3, len(IMAGES))).indices.tolist()
    print(f"{caption}: " + ", ".join(IMAGES[i].name for i in best))
