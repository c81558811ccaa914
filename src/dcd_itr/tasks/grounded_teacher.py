"""Train the grounded region cross-encoder on the scenes benchmark (``dcd train-teacher`` with ``kind: grounded``).

Curriculum, one run of the shared training loop (resumable, seeded; every epoch has ``steps_per_epoch`` steps):

- epochs ``< align_epochs`` (alignment): in-batch symmetric InfoNCE on two scores at once: the token-region late
  interaction (:meth:`GroundedCrossEncoder.alignment_matrix`, which teaches the grounding projections which words
  name which regions, without labels) and the similarity path (recognition);
- later epochs (binding): a listwise loss over 1 positive + ``negatives`` candidates per anchor, in both directions.
  Column 1 is always the swapped twin (image -> text: the twin's caption with the same template; text -> image: the
  twin image), the twin's other captions follow (image -> text), then ``hard_negatives`` candidates that share one
  of the related objects, then uniform ones. A pairwise margin on the twin column can be added
  (``twin_margin_weight``).

Validation each epoch on the first ``val_twin_pairs`` twin pairs of the val split: R@K / RSUM (the best checkpoint
is kept by RSUM) and the twin scores. After training, ``OUT/paths_only`` holds the best weights with the fusion term
removed, so ``dcd eval --model OUT/best --model OUT/paths_only`` shows what the fusion adds.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from dcd_itr.data.scene_annotations import load_scene_annotations
from dcd_itr.distill.contrastive import ListwiseRankingLoss, SymmetricInfoNCELoss
from dcd_itr.errors import ConfigError
from dcd_itr.evaluate.models import cross_metrics
from dcd_itr.evaluate.twins import twin_scores
from dcd_itr.features import SplitFeatures, load_split_features
from dcd_itr.interfaces import slice_features
from dcd_itr.io_utils import write_json_atomic
from dcd_itr.models.grounded import GroundedConfig, GroundedCrossEncoder, paths_only
from dcd_itr.models.registry import load_model, save_model_description
from dcd_itr.tasks.common import epoch_generator, prepare_run_dir, seed_initial_weights
from dcd_itr.train import TrainConfig, Trainer, TrainResult


@dataclass
class GroundedTeacherConfig:
    kind: str = "grounded"  # selects this task in `dcd train-teacher` (the fusion teacher has no `kind`)
    data: str = "data/scenes"
    features: str = "cache/features"
    out: str = "results/scenes_teacher"
    model: GroundedConfig = field(default_factory=GroundedConfig)
    align_epochs: int = (
        1  # recognition and grounding first: the binding stage starts from aligned projections
    )
    align_batch_size: int = 128  # images per in-batch InfoNCE step (one caption each)
    alignment_scale: float = (
        20.0  # fixed temperature of the late-interaction InfoNCE (cosines live in [-1, 1])
    )
    steps_per_epoch: int = 150  # every epoch the same length (the loop's schedule counts steps per epoch)
    negatives: int = 7  # 1 positive + 7 candidates per anchor, as in the probe
    hard_negatives: int = 3  # candidates sharing a related object with the anchor's scene
    anchors_per_batch: int = 64  # 64 x 8 = 512 scored pairs per step
    twin_margin_weight: float = 0.0  # weight of the hinge on (positive - twin); 0 = listwise loss alone
    twin_margin: float = 1.0  # the hinge's margin in logits
    val_twin_pairs: int = 50  # validation on 100 val images x 200 captions: ~10 s per epoch on one core
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=7, lr=1e-3, warmup_fraction=0.05, checkpoint_every=50)
    )


def is_grounded_config(path: Path) -> bool:
    """True when the YAML run config at ``path`` says ``kind: grounded`` (a bad file is left to load_config)."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and raw.get("kind") == "grounded"


class TwinMarginLoss(nn.Module):
    """Hinge on the swapped twin, column 1 of listwise logits (B, K) whose positive is column 0::

    L = mean_i max(0, margin - (logits_i0 - logits_i1))
    """

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.margin - (logits[:, 0] - logits[:, 1])).mean()


@dataclass(frozen=True)
class SceneIndex:
    """What list sampling needs from the scenes annotations of one split (rows in the split's order)."""

    twin: np.ndarray  # (N,) int64 row of each image's swapped twin (-1: none)
    caption_rows: list[
        list[int]
    ]  # captions of each image, in order (caption k of an image <-> k of its twin)
    sharing: list[np.ndarray]  # per image: rows of other scenes holding one of its two related objects

    @classmethod
    def from_dataset(cls, data: Path, split) -> SceneIndex:
        annotations = load_scene_annotations(data, split.name)
        if len(annotations) != split.num_images:
            raise ConfigError(f"{data}: scene annotations do not match the {split.name} split")
        related = [(a.objects[a.subject].codepoints, a.objects[a.object].codepoints) for a in annotations]
        holders: dict[str, list[int]] = {}
        for row, pair in enumerate(related):
            for code in pair:
                holders.setdefault(code, []).append(row)
        twin = np.asarray([a.twin_index for a in annotations], dtype=np.int64)
        sharing = []
        for row, pair in enumerate(related):
            rows = set(holders[pair[0]]) | set(holders[pair[1]])
            sharing.append(np.asarray(sorted(rows - {row, int(twin[row])}), dtype=np.int64))
        return cls(twin, split.image_to_captions, sharing)


def _fill(chosen: list[int], pool, count: int, exclude: set[int], rng: np.random.Generator) -> None:
    """Append up to ``count`` distinct rows of ``pool`` (an array, or an int meaning range(pool)) not in ``exclude``."""
    size = pool if isinstance(pool, int) else len(pool)
    tries = 0
    while count > 0 and size > 0 and tries < 20 * (count + 1):
        tries += 1
        value = int(rng.integers(size)) if isinstance(pool, int) else int(pool[rng.integers(size)])
        if value in exclude:
            continue
        exclude.add(value)
        chosen.append(value)
        count -= 1


def ranking_lists(index: SceneIndex, config: GroundedTeacherConfig, epoch: int) -> list[tuple[str, ...]]:
    """``steps_per_epoch`` batches of ("rank", image rows (B, 1+n), caption rows (B, 1+n)), positive in column 0,
    twin in column 1; anchors alternate directions. Deterministic in (seed, epoch)."""
    rng = np.random.default_rng(config.train.seed * 1_000_003 + epoch)
    width = 1 + config.negatives
    num_images = len(index.twin)
    owner = np.empty(sum(len(c) for c in index.caption_rows), dtype=np.int64)
    for row, captions in enumerate(index.caption_rows):
        owner[captions] = row
    with_twin = np.flatnonzero(index.twin >= 0)
    batches = []
    for _ in range(config.steps_per_epoch):
        image_rows, caption_rows = [], []
        for anchor in range(config.anchors_per_batch):
            image = int(with_twin[rng.integers(len(with_twin))])
            twin = int(index.twin[image])
            k = int(rng.integers(len(index.caption_rows[image])))
            caption = index.caption_rows[image][k]
            if anchor % 2 == 0:  # image -> text: the image against captions
                twin_captions = index.caption_rows[twin]
                chosen = [caption, twin_captions[min(k, len(twin_captions) - 1)]]
                exclude = set(index.caption_rows[image]) | set(chosen)
                _fill(chosen, twin_captions, width - len(chosen), exclude, rng)
                hard = [c for r in index.sharing[image] for c in index.caption_rows[int(r)]]
                _fill(chosen, np.asarray(hard, dtype=np.int64), config.hard_negatives, exclude, rng)
                _fill(chosen, len(owner), width - len(chosen), exclude, rng)
                image_rows.append([image] * width)
                caption_rows.append(chosen)
            else:  # text -> image: the caption against images
                chosen = [image, twin]
                exclude = set(chosen)
                _fill(chosen, index.sharing[image], config.hard_negatives, exclude, rng)
                _fill(chosen, num_images, width - len(chosen), exclude, rng)
                image_rows.append(chosen)
                caption_rows.append([caption] * width)
        batches.append(("rank", torch.tensor(image_rows), torch.tensor(caption_rows)))
    return batches


def alignment_batches(index: SceneIndex, config: GroundedTeacherConfig, epoch: int) -> list[tuple[str, ...]]:
    """``steps_per_epoch`` batches of ("align", image rows (B,), caption rows (B,)): distinct images, one random
    caption each. Deterministic in (seed, epoch)."""
    generator = epoch_generator(config.train.seed, epoch, salt=2)
    num_images = len(index.twin)
    batches = []
    for _ in range(config.steps_per_epoch):
        images = torch.randperm(num_images, generator=generator)[: config.align_batch_size]
        captions = [
            index.caption_rows[i][int(torch.randint(len(index.caption_rows[i]), (1,), generator=generator))]
            for i in images.tolist()
        ]
        batches.append(("align", images, torch.tensor(captions)))
    return batches


def validation_subset(
    features: SplitFeatures, twin: np.ndarray, pairs: int
) -> tuple[SplitFeatures, np.ndarray]:
    """The first ``pairs`` twin pairs of a split (both images, all their captions) and their twin rows."""
    rows: list[int] = []
    for row, other in enumerate(twin.tolist()):
        if other > row and len(rows) < 2 * pairs:
            rows += [row, other]
    position = {row: i for i, row in enumerate(rows)}
    subset = features.split.subset(rows)
    captions = torch.tensor([c for row in rows for c in features.split.image_to_captions[row]])
    images = slice_features(features.images, torch.tensor(rows))
    texts = slice_features(features.texts, captions)
    subset_twin = np.asarray([position[int(twin[row])] for row in rows], dtype=np.int64)
    return SplitFeatures(subset, images, texts), subset_twin


def validate_grounded(
    model: GroundedCrossEncoder, features: SplitFeatures, twin: np.ndarray
) -> dict[str, float]:
    """R@K / RSUM and the twin scores of every pair of the (small) validation subset."""
    metrics, result = cross_metrics(model, features, text_block=features.split.num_captions)
    return {**metrics, **twin_scores(result.scores, features.split, twin)}


def write_paths_only(out: Path) -> Path:
    """``OUT/paths_only``: the best weights with the fusion term removed (an evaluable model folder)."""
    best = load_model(out / "best")
    folder = out / "paths_only"
    folder.mkdir(parents=True, exist_ok=True)
    save_model_description(paths_only(best), folder)
    shutil.copyfile(out / "best" / "model.safetensors", folder / "model.safetensors")
    return folder


def train_grounded_teacher(config: GroundedTeacherConfig, progress: bool = True) -> TrainResult:
    out = prepare_run_dir(config)
    seed_initial_weights(config.train.seed)
    model = GroundedCrossEncoder(config.model)
    views = (model.image_views, model.text_views)
    data = Path(config.data)
    # token states read per batch (lazy): a COCO-sized split's do not fit in RAM
    train = load_split_features(data, Path(config.features), "train", *views, lazy=True)
    val = load_split_features(data, Path(config.features), "val", *views, lazy=True)
    train_index = SceneIndex.from_dataset(data, train.split)
    val_subset, val_twin = validation_subset(
        val, SceneIndex.from_dataset(data, val.split).twin, config.val_twin_pairs
    )
    save_model_description(model, out / "best")
    infonce, listwise = SymmetricInfoNCELoss(), ListwiseRankingLoss()
    twin_margin = TwinMarginLoss(config.twin_margin)

    def step(wrapped, batch):
        kind, image_rows, caption_rows = batch
        if kind == "align":
            images = wrapped.encode_images(slice_features(train.images, image_rows))
            texts = wrapped.encode_texts(slice_features(train.texts, caption_rows))
            align = infonce(config.alignment_scale * wrapped.alignment_matrix(images, texts))
            path = infonce(wrapped.similarity_matrix(images, texts))
            return {
                "loss": align["loss"] + path["loss"],
                "align": align["loss"].detach(),
                "path": path["loss"].detach(),
            }
        logits = wrapped(
            slice_features(train.images, image_rows.flatten()),
            slice_features(train.texts, caption_rows.flatten()),
        ).reshape(image_rows.shape)  # (B, 1+n)
        terms = listwise(logits)
        terms["twin_top1"] = (logits[:, 0] > logits[:, 1]).float().mean()
        if config.twin_margin_weight > 0:
            terms["loss"] = terms["loss"] + config.twin_margin_weight * twin_margin(logits)
        return terms

    def batches(epoch: int):
        if epoch < config.align_epochs:
            return alignment_batches(train_index, config, epoch)
        return ranking_lists(train_index, config, epoch)

    started = time.perf_counter()
    trainer = Trainer(model, [{"params": list(model.parameters())}], config.train, out, progress)
    result = trainer.fit(batches, step, lambda: validate_grounded(model, val_subset, val_twin))
    write_paths_only(out)
    timing = out / "training_time.json"  # wall seconds of each invocation (a resumed run adds one)
    runs = json.loads(timing.read_text(encoding="utf-8"))["invocations"] if timing.exists() else []
    write_json_atomic(timing, {"invocations": [*runs, round(time.perf_counter() - started, 1)]})
    return result
