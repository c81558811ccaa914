"""The scale benchmark's path at a small size, under a memory ceiling (issue 15: no whole split's token states).

A synthetic COCO-shaped dataset (benchmarks/scale_data.py) with 4,000 train images x 5 captions goes through the
teacher-score cache build (teacher encodings of the whole train split, pools, pair scores) and a dual -> cross
cascade evaluation, in a fresh process whose peak RSS growth after imports and a warm-up batch is measured
(VmHWM reset through /proc/self/clear_refs, as in test_feature_memory). Streaming (encodings spilled to disk past
a 4 MiB budget) must stay under a ceiling computed from the sizes: half the bytes of the teacher's encoded token
states of the train split, so holding them (what score_pools did before) cannot pass. Measured here: ~65 MiB
streamed; ~390 MiB with the encodings held (an unlimited budget). Not timing-based.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
TRAIN_IMAGES, TEST_IMAGES, WIDTH = 6_000, 400, 128  # teacher width 128: 8 KiB of encoded tokens per caption
ANCHORS = 8  # teacher-scored anchors per direction: 128 pairs, one small batch of fusion activations

CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import dcd_itr.feature_rows as feature_rows
from pathlib import Path
from dcd_itr.distill.frozen_teacher import load_frozen_teacher
from dcd_itr.distill.pools import Pools, build_pools, score_pools
from dcd_itr.evaluate.models import _features, encode_split
from dcd_itr.evaluate.scoring import rank_cascade
from dcd_itr.models.dual import DualEncoderModel
from dcd_itr.tasks.distill import build_teacher_cache
from scale import _distill_config

out, test_captions = Path(sys.argv[2]), int(sys.argv[3])

class Args:
    max_anchors, max_batches = int(sys.argv[4]), 1

def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

def run():  # the scale benchmark's teacher_cache stage (one direction) and its cascade evaluation, at this size
    config = _distill_config(out, "dual", Args)
    config.directions = ["image_to_text"]
    build_teacher_cache(config, progress=False)
    data, features = out / "data", out / "features"
    dual_features, cross_features = (_features(m, data, features, "test") for m in (dual, teacher.model))
    with torch.inference_mode():
        images, texts = encode_split(dual, dual_features.images, dual_features.texts)
        cross_images, cross_texts = encode_split(teacher.model, cross_features.images, cross_features.texts)
        metrics = rank_cascade(images["embedding"], texts["embedding"], teacher.model, cross_images,
                               cross_texts, dual_features.split.caption_to_image, 2, block_size=64, pair_batch=64,
                               progress=False)
    assert metrics["pairs_scored"] == 2 * (test_captions + test_captions // 5)

def growth(budget):
    feature_rows.SPILL_BUDGET_BYTES = budget
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak (VmHWM) to the current RSS
    baseline = status_kib("VmRSS")
    run()
    return max(status_kib("VmHWM") - baseline, 0) * 1024

teacher = load_frozen_teacher(out / "teacher")
dual = DualEncoderModel(_distill_config(out, "dual", Args).dual).eval()
split, images, texts = teacher.inputs(out / "data", out / "features", "train")
pools = build_pools(split, "image_to_text", 16, 0, 0)  # warm-up: one batch of pair activations
few = slice(0, Args.max_anchors)
warm = Pools(pools.direction, pools.anchor_rows[few] % 100, pools.positive[few] % 500, pools.candidates[few] % 500)
score_pools(teacher.model, {k: v[:100] for k, v in images.items()}, {k: v[:500] for k, v in texts.items()}, warm,
            progress=False)
del split, images, texts, pools
print(growth(4 * 2**20))  # streamed, with a 4 MiB spill budget
"""


@pytest.fixture(scope="module")
def coco_shaped(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from scale import _teacher
        from scale_data import Shape, write_dataset, write_features
    finally:
        sys.path.pop(0)
    out = tmp_path_factory.mktemp("scale")
    shape = Shape(train_images=TRAIN_IMAGES, val_images=10, test_images=TEST_IMAGES)
    write_dataset(out / "data", shape)
    write_features(out / "data", out / "features", shape)
    _teacher(out, width=WIDTH)
    return out


def peak_growth(out: Path) -> int:
    """Bytes by which the child's peak RSS exceeds its RSS after imports, models and a warm-up batch."""
    env = {
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "PATH": "/usr/bin:/bin",
        "TMPDIR": str(out),
    }
    command = [
        sys.executable,
        "-c",
        CHILD,
        str(ROOT / "benchmarks"),
        str(out),
        str(TEST_IMAGES * 5),
        str(ANCHORS),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.split()[-1])


def test_teacher_cache_and_cascade_stream_under_a_ceiling_set_by_the_split_size(coco_shaped):
    captions = TRAIN_IMAGES * 5
    encoded_tokens = (
        captions * 16 * WIDTH * 4
    )  # the teacher's projected token states of the train split: 234 MiB
    ceiling = (
        encoded_tokens // 2
    )  # holding them breaks it; streaming holds a batch, the spill budget and the pools
    streamed = peak_growth(coco_shaped)
    assert streamed < ceiling, (
        f"streaming grew the peak RSS by {streamed / MIB:.0f} MiB (ceiling {ceiling / MIB:.0f})"
    )
    assert list(coco_shaped.glob("dcd-spill-*")) == []  # spill folders are deleted with their readers


def test_spill_rows_keeps_small_results_in_memory_and_reads_spilled_ones_back_exactly():
    import gc

    import torch

    from dcd_itr.feature_rows import ShardedRows, spill_rows

    generator = torch.Generator().manual_seed(0)
    batches = [
        {
            "tokens": torch.randn(10, 3, 2, generator=generator),
            "mask": torch.rand(10, 3, generator=generator) > 0.5,
        }
        for _ in range(7)
    ]
    whole = {name: torch.cat([batch[name] for batch in batches]) for name in batches[0]}
    kept = spill_rows(iter(batches))  # 70 rows of a few bytes: under the default budget
    assert all(isinstance(value, torch.Tensor) for value in kept.values())
    assert torch.equal(kept["tokens"], whole["tokens"])
    spilled = spill_rows(iter(batches), budget_bytes=100, shard_bytes=300)  # 270 bytes a batch: one file each
    assert (
        all(isinstance(value, ShardedRows) for value in spilled.values())
        and len(spilled["tokens"].paths) == 7
    )
    rows = torch.tensor([69, 0, 33, 33, 12, 5])  # across files, repeated, out of order
    for name, value in whole.items():
        assert torch.equal(spilled[name][rows], value[rows]) and torch.equal(spilled[name][:], value)
    folder = Path(spilled["tokens"].keep_alive.name)
    assert folder.exists()
    del spilled
    gc.collect()
    assert not folder.exists()  # the spill folder goes with its last reader


def test_lazy_teacher_scores_equal_in_memory_ones_and_a_capped_round_keeps_its_anchors_pools(
    coco_shaped, monkeypatch
):
    import torch

    import dcd_itr.feature_rows as feature_rows
    from dcd_itr.distill.frozen_teacher import load_frozen_teacher
    from dcd_itr.distill.pools import build_pools, score_pools
    from dcd_itr.distill.teacher_cache import mine_round, subsample_anchors
    from dcd_itr.features import load_split_features

    teacher = load_frozen_teacher(coco_shaped / "teacher")
    split, images, texts = teacher.inputs(coco_shaped / "data", coco_shaped / "features", "test")  # lazy
    model = teacher.model
    whole = load_split_features(
        coco_shaped / "data", coco_shaped / "features", "test", model.image_views, model.text_views
    )
    pools = subsample_anchors(build_pools(split, "text_to_image", 16, 0, 0), 40, seed=0, round_index=0)
    monkeypatch.setattr(feature_rows, "SPILL_BUDGET_BYTES", 2**20)  # the test split's encodings: ~16 MiB
    lazy_scores = score_pools(model, images, texts, pools, progress=False)
    torch.testing.assert_close(
        lazy_scores, score_pools(model, whole.images, whole.texts, pools, progress=False)
    )
    capped = mine_round(
        model,
        split,
        images,
        texts,
        "image_to_text",
        16,
        8,
        seed=0,
        round_index=0,
        max_anchors=50,
        progress=False,
    )
    assert len(capped.anchor_rows) == 50
    keep = subsample_anchors(build_pools(split, "image_to_text", 16, 0, 0), 50, 0, 0)
    assert torch.equal(capped.candidates, keep.candidates)  # the full round's pools, for 50 of its anchors
    assert torch.equal(capped.anchor_rows, keep.anchor_rows) and len(set(capped.anchor_rows.tolist())) > 1
    torch.testing.assert_close(capped.pool_scores, score_pools(model, images, texts, keep, progress=False))
