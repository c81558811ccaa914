"""A COCO-sized run on one machine: each stage's wall time and peak resident memory (issue 15, item 2).

    nice -n 10 python benchmarks/scale.py --out /work/scratch/scale2/run [--train-images 113287]
        [--max-anchors 16384] [--max-batches 200] [--million 1000000] [--results benchmarks/results/scale]

A synthetic dataset with COCO's shape (benchmarks/scale_data.py: 113,287 train images x 5 captions, test 5,000 x
25,000; features written straight into the cache format, no towers) goes through the library's own paths:
teacher-score cache building with a small fusion teacher (random weights: costs, not quality, are measured),
one capped distillation epoch of each student (dual, and the cross student cut from the teacher), full
evaluation of 5K x 25K (dual; cascade dual -> cross with k = 16), an index of the test gallery, and a 1M-vector
faiss index. Every stage runs in its own child process with 1 torch / faiss thread; the parent reads the child's
peak RSS from ``os.wait4`` (ru_maxrss of that child alone). Capped stages get a projected full-size time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = (
    "data",
    "teacher_cache",
    "distill_dual",
    "distill_cross",
    "eval_dual",
    "eval_cascade",
    "index_test",
    "index_1m",
)
ANCHORS_PER_BATCH = 64  # DistillConfig's default
CASCADE_K = 16


def _shape(args):
    from scale_data import Shape

    return Shape(train_images=args.train_images, val_images=args.val_images, test_images=args.test_images)


def _teacher(out: Path, width: int = 32) -> Path:
    """A small fusion teacher (2 layers, width 32, one similarity path) with random weights, saved once."""
    import torch
    from safetensors.torch import save_file

    from dcd_itr.io_utils import with_checksum
    from dcd_itr.models.dual import DualConfig
    from dcd_itr.models.fusion import FusionConfig, FusionCrossEncoder
    from dcd_itr.models.registry import save_model_description
    from scale_data import IMAGE_POOLED, IMAGE_VIEW, TEXT_POOLED, TEXT_TOKENS, TEXT_VIEW, TOKEN_DIM

    path = DualConfig(IMAGE_VIEW, TEXT_VIEW, IMAGE_POOLED, TEXT_POOLED, embed_dim=64, hidden_dim=128)
    config = FusionConfig(
        similarity_paths=[path],
        fusion_image_view=IMAGE_VIEW,
        fusion_text_view=TEXT_VIEW,
        image_token_dim=TOKEN_DIM,
        text_token_dim=TOKEN_DIM,
        image_grid=3,
        max_text_tokens=TEXT_TOKENS,
        width=width,
        num_layers=2,
        num_heads=2,
        ffn_multiplier=2,
    )
    torch.manual_seed(0)
    model = FusionCrossEncoder(config)
    torch.nn.init.normal_(model.head[-1].weight, std=0.5)  # a random teacher whose fusion term is not zero
    folder = out / "teacher"
    folder.mkdir(parents=True, exist_ok=True)
    save_model_description(model, folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata=with_checksum(state))
    return folder


def _distill_config(out: Path, student: str, args):
    from dcd_itr.models.dual import DualConfig
    from dcd_itr.tasks.distill import DistillConfig
    from dcd_itr.train import TrainConfig
    from scale_data import IMAGE_POOLED, IMAGE_VIEW, TEXT_POOLED, TEXT_VIEW

    return DistillConfig(
        data=str(out / "data"),
        features=str(out / "features"),
        out=str(out / f"student_{student}"),
        teacher=str(out / "teacher"),
        teacher_cache=str(out / "teacher_scores"),
        student=student,
        dual=DualConfig(IMAGE_VIEW, TEXT_VIEW, IMAGE_POOLED, TEXT_POOLED),
        max_anchors_per_round=args.max_anchors,
        anchors_per_batch=ANCHORS_PER_BATCH,
        train=TrainConfig(epochs=1, lr=1e-3, max_batches_per_epoch=args.max_batches, checkpoint_every=10**6),
    )


def run_stage(name: str, out: Path, args) -> dict:
    """One stage, in this (child) process; returns its details for the report."""
    import torch

    torch.set_num_threads(1)
    data, features = out / "data", out / "features"
    if name == "data":
        from scale_data import write_dataset, write_features

        write_dataset(data, _shape(args))
        write_features(data, features, _shape(args))
        _teacher(out)
        used = sum(f.stat().st_size for f in features.rglob("*") if f.is_file())
        return {"feature_cache_gib": used / 2**30}
    if name == "teacher_cache":
        import dcd_itr.distill.pools as pools
        import dcd_itr.tasks.distill as task

        timers = {"encode_seconds": 0.0, "score_seconds": 0.0, "pairs": 0}
        encode, score = pools._encode_all, task.score_pools

        def timed_encode(*a, **k):
            started = time.perf_counter()
            result = encode(*a, **k)
            timers["encode_seconds"] += time.perf_counter() - started
            return result

        def timed_score(teacher, images, texts, pool, **k):
            started = time.perf_counter()
            result = score(teacher, images, texts, pool, **k)
            timers["score_seconds"] += time.perf_counter() - started
            timers["pairs"] += pool.candidates.numel()
            return result

        pools._encode_all, task.score_pools = timed_encode, timed_score
        config = _distill_config(out, "dual", args)
        seconds = task.build_teacher_cache(config, progress=False)
        pairs_only = timers["score_seconds"] - timers["encode_seconds"]  # pair scoring alone
        full_pairs = 2 * args.train_images * 5 * config.pool_size
        fixed = seconds - pairs_only
        return {
            **timers,
            "seconds": seconds,
            "pairs_per_second": timers["pairs"] / pairs_only,
            "projected_full_seconds": fixed + pairs_only * full_pairs / timers["pairs"],
            "cap": f"{args.max_anchors} anchors of {args.train_images * 5} per direction",
        }
    if name in ("distill_dual", "distill_cross"):
        from dcd_itr.tasks.distill import distill

        student = name.split("_")[1]
        result = distill(_distill_config(out, student, args), progress=False)
        batches = min(args.max_batches, 2 * args.max_anchors // ANCHORS_PER_BATCH)
        per_batch = result.seconds_per_epoch[0] / batches
        full_batches = 2 * args.train_images * 5 // ANCHORS_PER_BATCH
        return {
            "epoch_seconds": result.seconds_per_epoch[0],
            "batches": batches,
            "projected_full_seconds": per_batch * full_batches,
            "cap": f"{batches} of {full_batches} batches of {ANCHORS_PER_BATCH} anchors",
            "val": {k: v for k, v in result.best_metrics.items() if k in ("rsum", "r1_i2t", "r1_t2i")},
        }
    if name == "eval_dual":
        from dcd_itr.evaluate.models import evaluate_model

        metrics = evaluate_model(out / "student_dual" / "best", data, features, "test", progress=False)
        return {"rsum": metrics["rsum"]}
    if name == "eval_cascade":
        from dcd_itr.evaluate.models import evaluate_cascade

        dual, cross = out / "student_dual" / "best", out / "student_cross" / "best"
        metrics = evaluate_cascade(dual, cross, data, features, "test", CASCADE_K, progress=False)
        return {"rsum": metrics["rsum"], "pairs_scored": metrics["pairs_scored"]}
    if name == "index_test":
        return _index_test(out, data, features)
    if name == "index_1m":
        return _index_million(out, args.million)
    raise ValueError(f"unknown stage {name!r}")


def _index_test(out: Path, data: Path, features: Path) -> dict:
    """The test gallery's index through the build path (shards, merge, faiss-flat); the embeddings come from the
    dual student on cached pooled vectors (the towers are skipped, as everywhere in this benchmark)."""
    import torch

    from dcd_itr.features import POOLED_ONLY, load_split_features
    from dcd_itr.models.registry import load_model
    from dcd_itr.search.build import (
        DEFAULT_SHARD_SIZE,
        _prepare_manifest,
        _write_shard,
        merge_shards,
        shard_path,
    )
    from dcd_itr.search.gallery import Gallery
    from scale_data import IMAGE_VIEW, TEXT_VIEW

    model_dir = out / "student_dual" / "best"
    model = load_model(model_dir)
    cached = load_split_features(data, features, "test", [IMAGE_VIEW], [TEXT_VIEW], names=POOLED_ONLY)
    gallery = Gallery.from_split(cached.split, "images", model_dir, data)
    folder = out / "index_test"
    _prepare_manifest(folder, gallery, DEFAULT_SHARD_SIZE)
    with torch.inference_mode():
        for shard, start in enumerate(range(0, len(gallery), DEFAULT_SHARD_SIZE)):
            stop = min(start + DEFAULT_SHARD_SIZE, len(gallery))
            rows = {k: v[start:stop] for k, v in cached.images.items()}
            embedding = model.encode_images(rows)["embedding"].float()
            _write_shard(shard_path(folder, shard), embedding, start, stop, gallery.model_fingerprint)
    merge_shards(folder, "faiss-flat")
    return {"items": len(gallery)}


def _index_million(out: Path, count: int, dim: int = 256, chunk: int = 100_000) -> dict:
    """``count`` random unit vectors (D = 256, the dual's embedding size) in a faiss-flat index, added in chunks,
    saved, reloaded and searched (100 single queries, k = 10)."""
    import faiss
    import numpy as np

    from dcd_itr.search.index import create_index, load_index

    faiss.omp_set_num_threads(1)
    index = create_index("faiss-flat", dim)
    generator = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, count, chunk):
        vectors = generator.standard_normal((min(chunk, count - start), dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index.add(np.arange(start, start + len(vectors), dtype=np.int64), vectors)
    folder = out / "index_1m"
    index.save(folder)
    build = time.perf_counter() - started
    del index
    index = load_index(folder)
    queries = generator.standard_normal((100, dim), dtype=np.float32)
    latencies = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None, :], 10)
        latencies.append(time.perf_counter() - started)
    return {
        "vectors": count,
        "build_seconds": build,
        "search_ms_p50": float(np.percentile(latencies, 50) * 1000),
        "search_ms_p99": float(np.percentile(latencies, 99) * 1000),
    }


def run_child(name: str, out: Path, args, log) -> dict:
    """Run stage ``name`` in a child process; wall seconds and the child's own peak RSS (``os.wait4``)."""
    command = [sys.executable, __file__, "--stage", name, *sys.argv[1:]]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TMPDIR": str(out / "tmp")}
    (out / "tmp").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=log, stderr=log, env=environment)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit {child.returncode}); see {log.name}")
    details = json.loads((out / "stages" / f"{name}.json").read_text(encoding="utf-8"))
    return {"stage": name, "seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, **details}


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    with open("/proc/cpuinfo") as cpuinfo:
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?"
        )
    return f"{platform.machine()}, {os.cpu_count()} cores ({model}), {memory:.0f} GiB RAM, Linux {platform.release()}"


LABELS = {  # report wording of the stages' detail keys
    "score_seconds": "score_pools s (encoding included)",
    "encode_seconds": "encoding s (both sides, both directions)",
    "epoch_seconds": "capped epoch s (training steps)",
    "val": "val (100 images)",
}


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_shown(v)}" for k, v in value.items())
    return f"{value:,}" if isinstance(value, int) else str(value)


def write_report(rows: list[dict], args, command: str, results: Path, note: str = "") -> None:
    from dcd_itr.io_utils import write_json_atomic, write_text_atomic

    payload = {"command": command, "machine": machine(), "load_average": os.getloadavg(), "stages": rows}
    payload |= {"note": note} if note else {}
    write_json_atomic(results.with_suffix(".json"), payload)
    lines = [
        "# COCO-sized run on one machine",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {payload['machine']}; load average at the end {os.getloadavg()[0]:.1f} (shared machine). "
        "1 torch / faiss thread per stage; each stage a child process, peak RSS = its own ru_maxrss (os.wait4).",
        "",
        f"Shape: train {args.train_images:,} images x 5 captions, val {args.val_images} x 5, test "
        f"{args.test_images:,} x {args.test_images * 5:,}; synthetic features in the cache format "
        "(benchmarks/scale_data.py), small random fusion teacher (2 layers, width 32).",
        "",
        "| stage | wall s | peak RSS MiB | projected full-size s | notes |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        projected = row.get("projected_full_seconds")
        notes = {
            k: v
            for k, v in row.items()
            if k not in ("stage", "seconds", "peak_rss_mib", "projected_full_seconds")
        }
        detail = "; ".join(f"{LABELS.get(k, k)} {_shown(v)}" for k, v in notes.items())
        lines.append(
            f"| {row['stage']} | {row['seconds']:.1f} | {row['peak_rss_mib']:.0f} | "
            f"{f'{projected:.0f}' if projected else '-'} | {detail} |"
        )
    peak = max(row["peak_rss_mib"] for row in rows)
    lines += ["", f"Peak RSS over all stages: {peak:.0f} MiB (target <= 8192)."] + (
        ["", note] if note else []
    )
    write_text_atomic(results.with_suffix(".md"), "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (data, caches, models)")
    parser.add_argument("--train-images", type=int, default=113_287)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=5_000)
    parser.add_argument(
        "--max-anchors", type=int, default=16_384, help="teacher-scored anchors per direction"
    )
    parser.add_argument(
        "--max-batches", type=int, default=200, help="distillation batches in the capped epoch"
    )
    parser.add_argument("--million", type=int, default=1_000_000, help="vectors in the large faiss index")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/scale"))
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    parser.add_argument(
        "--report-from", type=Path, help="write the report from a run's printed rows (JSON lines)"
    )
    parser.add_argument("--command", help="with --report-from: the command that printed the rows")
    parser.add_argument("--note", default="", help="with --report-from: a line added under the table")
    args = parser.parse_args()
    if args.report_from:
        lines = args.report_from.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.startswith("{")]
        write_report(rows, args, args.command or "see --report-from", args.results, args.note)
        return
    if args.stage:
        details = run_stage(args.stage, args.out, args)
        (args.out / "stages").mkdir(parents=True, exist_ok=True)
        (args.out / "stages" / f"{args.stage}.json").write_text(json.dumps(details), encoding="utf-8")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/scale.py " + " ".join(sys.argv[1:])
    rows = []
    with open(args.out / "stages.log", "a") as log:
        for name in args.stages:
            row = run_child(name, args.out, args, log)
            print(json.dumps(row), flush=True)
            rows.append(row)
    write_report(rows, args, command, args.results)


if __name__ == "__main__":
    main()
