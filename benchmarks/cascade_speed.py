"""The cascade that pays only fusion, timed end to end on a >= 10K-image gallery (issue 15 item 4).

Needs an index built with the cross student's gallery-side encodings (``dcd index build ... --cross STUDENT``).
Runs ``--queries`` gallery captions through query text -> dual top-k -> re-rank of the top ``--rerank`` by the
cross student (measured), the old query-time path on ``--old-queries`` of them (measured, with an equality check),
the teacher's and the student's rates on ``--sample-images`` x ``--sample-queries`` pairs (measured) with the
teacher's full ranking of the gallery projected from them, and the COCO-5K projection
(dcd_itr.speed.cascade). One torch thread, one FAISS thread. Writes benchmarks/results/cascade_speed.{md,json}.

    python benchmarks/cascade_speed.py --index /work/scratch/fusion/index10k \
        --cross /work/demo_run/results/demo_scenes/dcd_cross/best --teacher teachers/scenes_grounded
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import faiss
import torch

from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.search.retriever import Retriever
from dcd_itr.speed.cascade import (
    CascadeRun,
    dual_seconds,
    gallery_queries,
    old_path,
    project_coco,
    sample_rates,
    sample_tower_features,
    time_cascade,
)
from dcd_itr.speed.common import format_ratio, format_seconds


def markdown(run: CascadeRun) -> str:
    s, c, o, t, st, p = (
        run.settings,
        run.cascade,
        run.old_path,
        run.teacher,
        run.student_sample,
        run.projection,
    )
    n = s["gallery"]
    teacher_query_s = t["text_s"] + n * t["pair_s"]
    cascade_query_s = 1 / c["queries_per_s"]
    lines = [
        "# Cascade end to end on a 10K-image gallery: dual top-k, re-rank from stored gallery encodings",
        "",
        f"Command: `{s['command']}`",
        "",
        f"Gallery: {n:,} images ({s['index']}); first stage {s['dual']}; re-rank top {s['rerank']} by "
        f"{s['cross']} ({st['fusion_layers']} fusion layer); teacher {s['teacher']} ({t['fusion_layers']} layers). "
        f"{s['threads']} torch thread, 1 FAISS thread; load average {s['load_start']:.1f} at the start, "
        f"{s['load_end']:.1f} at the end (shared 2-core machine).",
        "",
        "| system | queries | measured / projected | s per query | queries/s | speed-up vs teacher |",
        "|---|---|---|---|---|---|",
        f"| cascade k={s['rerank']}, gallery side stored | {c['queries']} | measured end to end | "
        f"{cascade_query_s * 1000:.1f} ms | {c['queries_per_s']:.1f} | {format_ratio(teacher_query_s / cascade_query_s)} |",
        f"| cascade k={s['rerank']}, old path (cross towers on the top k at query time) | {o['queries']} | measured "
        f"end to end | {o['seconds'] / o['queries'] * 1000:.0f} ms | {o['queries_per_s']:.2f} | "
        f"{format_ratio(teacher_query_s * o['queries_per_s'])} |",
        f"| teacher, full ranking of the gallery | {s['sample_queries']} | projected: text side + {n:,} x pair "
        f"time measured on {t['pairs']:,} pairs | {format_seconds(teacher_query_s)} | {1 / teacher_query_s:.3f} | 1x |",
        f"| cross student, full ranking of the gallery | {s['sample_queries']} | projected the same way | "
        f"{format_seconds(st['text_s'] + n * st['pair_s'])} | {1 / (st['text_s'] + n * st['pair_s']):.3f} | "
        f"{format_ratio(teacher_query_s / (st['text_s'] + n * st['pair_s']))} |",
        "",
        "Cascade parts (mean ms per query): "
        + ", ".join(f"{k} {v:.2f}" for k, v in c["ms_mean"].items())
        + f"; p50 total {c['ms_p50_total']:.1f} ms. Re-rank: {c['rerank_pair_s'] * 1e6:.0f} us per re-scored pair "
        f"({1 / c['rerank_pair_s']:,.0f} pairs/s incl. gather and sort). Pair rates on the sample (image sides "
        f"computed beforehand): teacher {t['pairs_per_s']:,.0f} pairs/s, student {st['pairs_per_s']:,.0f} pairs/s "
        f"({st['pairs_per_s'] / t['pairs_per_s']:.2f}x). Old path vs stored path on {o['queries']} queries: same "
        f"hits {o['same_hits']}, max |cross score difference| {o['max_abs_cross_score_difference']:.1e}.",
        "",
        f"Recall of the query's own image among {n:,} ({c['queries']} queries): dual R@1 {c['dual_R@1']:.1f}, "
        f"R@10 {c['dual_R@10']:.1f}; cascade R@1 {c['cascade_R@1']:.1f}, R@10 {c['cascade_R@10']:.1f}.",
        "",
        f"**COCO-5K projection** ({p['images']:,} images x {p['captions']:,} captions, both directions) from the "
        "rates measured above: cascade = N x (dual image "
        f"{run.per_image['dual'] * 1000:.1f} ms + cross image side {run.per_image['cross'] * 1000:.1f} ms) + M x "
        f"(dual text {run.per_image['dual_text'] * 1000:.1f} ms + cross text side "
        f"{st['text_batched_s'] * 1000:.1f} ms, batched) + dual grid {format_seconds(p['dual_grid_s'])} (timed at full "
        f"size) + (N + M) x {s['rerank']} re-scored pairs; teacher = N x image side "
        f"{run.per_image['teacher'] * 1000:.1f} ms + M x text side {t['text_batched_s'] * 1000:.1f} ms (batched) + N x M "
        f"pairs. Image sides include the region towers ({run.per_image['region_towers'] * 1000:.1f} ms per image, "
        f"batched); per-query online encoding (above) is {c['ms_mean']['encode']:.1f} ms.",
        "",
        "| system | COCO-5K | speed-up vs teacher |",
        "|---|---|---|",
        f"| teacher (full ranking) | {format_seconds(p['teacher_s'])} | 1x |",
        f"| cascade k={s['rerank']}, gallery side stored | {format_seconds(p['cascade_s'])} | {format_ratio(p['speedup'])} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", type=Path, required=True, help="index built with --cross")
    parser.add_argument("--cross", type=Path, required=True, help="the cross student the index stores")
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--rerank", type=int, default=16)  # the cascade k
    parser.add_argument("--queries", type=int, default=300)  # gallery captions, seed 0
    parser.add_argument("--old-queries", type=int, default=6)  # the old path costs ~2 s a query
    parser.add_argument("--sample-images", type=int, default=128)  # gallery images the teacher scores
    parser.add_argument("--sample-queries", type=int, default=32)  # queries x sample images = teacher pairs
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    load_start = os.getloadavg()[0]
    retriever = Retriever(args.index, cross_dir=args.cross)
    if retriever.cross_store is None:
        raise SystemExit(f"{args.index} stores no cross encodings: build it with --cross {args.cross}")
    retriever.warm_up()
    queries = gallery_queries(retriever, args.queries)
    run = CascadeRun(
        settings={
            "command": "python " + shlex.join(sys.argv),
            "index": str(args.index),
            "gallery": len(retriever.gallery),
            "dual": retriever.gallery.model_dir,
            "cross": str(args.cross),
            "teacher": str(args.teacher),
            "rerank": args.rerank,
            "sample_queries": args.sample_queries,
            "threads": torch.get_num_threads(),
            "load_start": load_start,
            "machine": platform.platform(),
        }
    )
    run.cascade = time_cascade(retriever, queries, 10, args.rerank)
    print("cascade", run.cascade, flush=True)
    run.old_path = old_path(retriever, queries[: args.old_queries], args.rerank)
    print("old path", run.old_path, flush=True)
    sample_paths = retriever.gallery.image_paths[: args.sample_images]
    sample_texts = [text for text, _ in queries[: args.sample_queries]]
    towers, run.per_image["region_towers"] = sample_tower_features(args.cross, sample_paths)
    run.teacher, teacher_image_s = sample_rates(args.teacher, towers, sample_texts, "teacher")
    run.per_image["teacher"] = run.per_image["region_towers"] + teacher_image_s
    print("teacher", run.teacher, flush=True)
    run.student_sample, student_image_s = sample_rates(args.cross, towers, sample_texts, "student")
    run.per_image["cross"] = run.per_image["region_towers"] + student_image_s
    print("student", run.student_sample, flush=True)
    run.per_image["dual"], run.per_image["dual_text"] = dual_seconds(
        Path(retriever.gallery.model_dir), sample_paths[:64], sample_texts
    )
    run.projection = project_coco(run, args.rerank, retriever.index.dim)
    run.settings["load_end"] = os.getloadavg()[0]
    print("projection", run.projection, flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "cascade_speed.json", asdict(run))
    write_text_atomic(args.results / "cascade_speed.md", markdown(run))
    print(markdown(run))


if __name__ == "__main__":
    main()
