"""The compressed cross student and the cascade on the scenes relation benchmark (issue 13).

    python benchmarks/scenes_cross.py --data data/scenes --features cache/features \\
        --teacher results/scenes_teacher/best \\
        --student cut=results/scenes/dcd_cross/best --student random=results/scenes/cross_random/best \\
        --dual results/scenes/dual_pos/best --ks 8 16 32 [--split test] [--timing-images 40]

Every cross-encoder (the teacher, the teacher with its fusion removed = "paths-only", each student; also each
student *before* training, the cut as copied) ranks all N x M pairs of the split from the cached features;
Recall@K, RSUM and the twin text / image / group scores come from those matrices, and each student's retention of
the teacher's interaction gain, (student - paths-only) / (teacher - paths-only), for RSUM and twin group.

Speed, side by side in this one process on one torch thread: the same ``--timing-images`` images x all captions
scored by the teacher and by each student (score_matrix on already-encoded features, the cost of the fusion
stack), alternating models over ``--repeats`` rounds, best round kept; pairs/s and the student's speed-up.

Cascade: the dual's top k (both directions) re-ranked by each student (and by the teacher, for reference), for each
k; timed end to end from cached features (dual encode + first stage + cross encode + re-ranking), twin scores from
the cascade's final order. Writes RESULTS/scenes_cross.json and scenes_cross.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

from dcd_itr.evaluate import encode_all, rank_cascade, score_all_pairs
from dcd_itr.evaluate.retention import retention_table
from dcd_itr.evaluate.twins import cascade_score_matrices, dataset_twin_scores
from dcd_itr.features import load_split_features
from dcd_itr.interfaces import slice_features
from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.metrics import recall_at_k_from_scores
from dcd_itr.models.cross_student import build_cross_student
from dcd_itr.models.grounded import paths_only
from dcd_itr.models.registry import load_model

KEYS = ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5", "rsum")
TWIN_KEYS = ("twin_text", "twin_image", "twin_group")


def full_ranking(model, images, texts, split, data) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics + twin scores of a cross-encoder over all pairs of the split (features already encoded)."""
    result = score_all_pairs(model, images, texts, text_block=split.num_captions, progress=False)
    metrics = recall_at_k_from_scores(result.scores, split.caption_to_image)
    metrics |= dataset_twin_scores(data, split, result.scores)
    return {**metrics, "full_ranking_seconds": result.seconds}, result.scores


@torch.inference_mode()
def pair_speed(
    models: dict[str, Any], encoded: dict[str, tuple], rows: int, repeats: int
) -> dict[str, float]:
    """Pairs/s of each model scoring the first ``rows`` images x all captions, alternating models per round."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, model in models.items():
            images, texts = encoded[name]
            subset = slice_features(images, slice(0, rows))
            started = time.perf_counter()
            scores = model.score_matrix(subset, texts)
            seconds = time.perf_counter() - started
            best[name] = max(best.get(name, 0.0), scores.numel() / seconds)
    return best


def cascade_row(dual, dual_features, cross, cross_features, data, k: int) -> dict[str, Any]:
    """A dual -> cross cascade timed end to end from cached features, with twin scores of its final order."""
    split = dual_features.split
    with torch.inference_mode():
        started = time.perf_counter()
        first_images = encode_all(dual.encode_images, dual_features.images, 1024)["embedding"]
        first_texts = encode_all(dual.encode_texts, dual_features.texts, 1024)["embedding"]
        images = encode_all(cross.encode_images, cross_features.images, 256)
        texts = encode_all(cross.encode_texts, cross_features.texts, 256)
        metrics = rank_cascade(
            first_images, first_texts, cross, images, texts, split.caption_to_image, k, progress=False
        )
        seconds = time.perf_counter() - started
        by_image, by_caption = cascade_score_matrices(
            first_images @ first_texts.T,
            lambda i, t: cross.score_pairs(slice_features(images, i), slice_features(texts, t)),
            k,
        )
    metrics |= dataset_twin_scores(data, split, by_image, by_caption)
    return {**metrics, "end_to_end_seconds": seconds}


def _fmt(value: Any) -> str:
    return "—" if value is None else (f"{value:.1f}" if isinstance(value, float) else str(value))


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Compressed cross student and cascade on the scenes benchmark",
        "",
        f"Command: `{report['command']}`",
        f"Split {report['split']}: {report['num_images']} images x {report['num_captions']} captions; "
        f"teacher {report['teacher']}; machine {report['machine']}, 1 torch thread.",
        "",
        "| system | fusion layers | "
        + " | ".join(KEYS + TWIN_KEYS)
        + " | RSUM gain ret. % | group gain ret. % |",
        "|---|---|" + "---|" * (len(KEYS) + len(TWIN_KEYS) + 2),
    ]
    for name, row in report["systems"].items():
        values = [_fmt(row.get(key)) for key in KEYS + TWIN_KEYS]
        retention = [
            _fmt(row.get("retention", {}).get(f"{m}_gain_retention")) for m in ("rsum", "twin_group")
        ]
        lines.append(f"| {name} | {row.get('fusion_layers', '')} | " + " | ".join(values + retention) + " |")
    lines += ["", "Pair scoring (same images x all captions, encoded features, best of the rounds):", ""]
    lines += ["| model | pairs/s | speed-up vs teacher |", "|---|---|---|"]
    teacher_speed = report["pair_speed"]["teacher"]
    for name, speed in report["pair_speed"].items():
        lines.append(f"| {name} | {speed:,.0f} | {speed / teacher_speed:.2f}x |")
    lines += ["", "Cascades (dual top k -> cross; end to end from cached features):", ""]
    lines += [
        "| first stage -> second stage | k | RSUM | % teacher RSUM | twin group | % teacher group | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    teacher = report["systems"]["teacher"]
    for row in report["cascades"]:
        lines.append(
            f"| {row['dual']} -> {row['cross']} | {row['k']} | {row['rsum']:.1f} | "
            f"{100 * row['rsum'] / teacher['rsum']:.1f} | {_fmt(row.get('twin_group'))} | "
            f"{_fmt(100 * row['twin_group'] / teacher['twin_group'] if teacher.get('twin_group') else None)} | "
            f"{row['end_to_end_seconds']:.1f} |"
        )
    lines.append(f"\nTeacher full ranking: {teacher['full_ranking_seconds']:.1f} s (pair scoring only).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="the scenes dataset folder")
    parser.add_argument("--features", type=Path, required=True, help="feature cache with every model's views")
    parser.add_argument("--teacher", type=Path, required=True, help="the grounded teacher (a model folder)")
    parser.add_argument("--student", action="append", default=[], help="NAME=FOLDER (repeatable)")
    parser.add_argument("--dual", action="append", default=[], help="NAME=FOLDER first stage (repeatable)")
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32], help="cascade depths (dual top k)")
    parser.add_argument("--split", default="test", help="split to rank (val or test)")
    parser.add_argument(
        "--timing-images",
        type=int,
        default=40,
        help="images x all captions per timing round (40 x 600 = 24k pairs)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds; the best is kept")
    parser.add_argument("--cascade-teacher", action="store_true", help="also cascade into the teacher")
    parser.add_argument(
        "--results", type=Path, default=Path("benchmarks/results"), help="folder for scenes_cross.md / .json"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    teacher = load_model(args.teacher).eval()
    models = {"teacher": teacher, "paths-only": paths_only(teacher).eval()}
    students = dict(item.split("=", 1) for item in args.student)
    for name, folder in students.items():
        models[name] = load_model(Path(folder)).eval()
    models["cut, untrained"] = build_cross_student(teacher).eval()  # the copy before any distillation
    features = load_split_features(
        args.data, args.features, args.split, teacher.image_views, teacher.text_views
    )
    split = features.split
    encoded, systems, scores = {}, {}, {}
    for name, model in models.items():
        with torch.inference_mode():
            encoded[name] = (
                encode_all(model.encode_images, features.images, 256),
                encode_all(model.encode_texts, features.texts, 256),
            )
        metrics, scores[name] = full_ranking(model, *encoded[name], split, args.data)
        depth = model.fusion_depth if model.config.fusion else 0
        systems[name] = {"fusion_layers": depth, **metrics}
        print(name, {k: round(v, 1) for k, v in metrics.items() if k in KEYS + TWIN_KEYS}, flush=True)
    for name in systems:
        if name not in ("teacher", "paths-only"):
            systems[name]["retention"] = retention_table(
                systems[name], systems["teacher"], systems["paths-only"]
            )
    timed = {name: models[name] for name in models if name not in ("paths-only", "cut, untrained")}
    speed = pair_speed(timed, encoded, args.timing_images, args.repeats)
    print("pairs/s", {k: round(v) for k, v in speed.items()}, flush=True)

    cascades = []
    seconds_cross = [name for name in students] + (["teacher"] if args.cascade_teacher else [])
    for dual_name, dual_folder in (item.split("=", 1) for item in args.dual):
        dual = load_model(Path(dual_folder)).eval()
        dual_features = load_split_features(
            args.data, args.features, args.split, dual.image_views, dual.text_views
        )
        for cross_name in seconds_cross:
            for k in args.ks:
                row = cascade_row(dual, dual_features, models[cross_name], features, args.data, k)
                cascades.append({"dual": dual_name, "cross": cross_name, "k": k, **row})
                print(dual_name, cross_name, k, round(row["rsum"], 1), row.get("twin_group"), flush=True)

    report = {
        "command": "python benchmarks/scenes_cross.py " + " ".join(_argv()),
        "split": args.split,
        "num_images": split.num_images,
        "num_captions": split.num_captions,
        "teacher": str(args.teacher),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch_threads": torch.get_num_threads(),
        "systems": systems,
        "pair_speed": speed,
        "cascades": cascades,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "scenes_cross.json", report)
    write_text_atomic(args.results / "scenes_cross.md", markdown(report))
    print(markdown(report))


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
