"""Part 4: the benchmark's outputs -- ``speed.json`` (everything), ``speed.md`` (the README's tables, also
printed) and ``speed_plot.png`` (RSUM against the time to rank the split, log-scale time).

Every figure from a random-weight model carries the timing-only label; the galleries of the latency table are
labelled synthetic; the machine line says where the numbers come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dcd_itr.io_utils import write_json_atomic, write_text_atomic
from dcd_itr.speed.common import format_ratio, format_seconds
from dcd_itr.speed.latency import setting_label
from dcd_itr.speed.projection import RANKING_BENCHMARKS
from dcd_itr.speed.ranking import TOP_IMAGES, SystemRun

TARGETS = {  # the targets
    "dual_speedup_coco": 1000.0,
    "cascade_speedup_coco": 129.0,
    "cascade_rsum_pct": 99.0,
    "latency_p50_ms": 10.0,
    "latency_recall": 0.95,
}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPU cores, {machine['torch_threads']} torch/FAISS "
        f"threads, torch {machine['torch']}, FAISS {machine['faiss']}, device {machine['device']}; load average "
        f"{machine['load_average_1_5_15'][0]} at the start (a shared machine inflates times)."
    )


def ranking_table(payload: dict[str, Any]) -> str:
    split = payload["split"]
    rows = [
        [
            row["name"],
            format_seconds(row["image_encoding_s"]),
            format_seconds(row["text_encoding_s"]),
            format_seconds(row["scoring_s"]),
            format_seconds(row["total_s"]),
            _number(row["pairs_per_s"], 0),
            _number(row["items_per_s_encoding"], 0),
            format_ratio(row["speedup_over_teacher"]),
            _number(row["rsum"]),
            _number(row["rsum_pct_of_teacher"]) + ("%" if row["rsum_pct_of_teacher"] is not None else ""),
        ]
        for row in payload["ranking"]
    ]
    header = ["System", "Image encoding", "Text encoding", "Scoring", "Total", "Pairs/s (scoring)"]
    header += ["Items/s (encoding)", "Speed-up vs teacher", "RSUM", "RSUM % of teacher"]
    title = (
        f"**Full ranking of the {split['data']} {split['name']} split ({split['num_images']:,} images x "
        f"{split['num_captions']:,} captions) from raw images and captions.** Encoding: image decoding + towers "
        "+ heads (image) and tokeniser + tower + heads (text), once per item; scoring: every pair (cross), all "
        "similarities (dual) or the dual's ranking + k cross pairs per query (cascade), then the ranks. "
        "Pairs/s counts cross-encoder pairs (dual: image-caption similarities)."
    )
    return title + "\n\n" + _table(header, rows)


def projection_table(payload: dict[str, Any]) -> str:
    benches = list(RANKING_BENCHMARKS)
    first = benches[0]
    rows = []
    for row in payload["projection"]:
        vs_teacher, vs_vilt = row["speedup_over_teacher"], row["speedup_over_vilt"]
        rows.append(
            [
                row["name"],
                _number(row["image_s"] * 1000, 2),
                _number(row["text_s"] * 1000, 2),
                _number(row["pairs_per_s"], 1) if row["pairs_per_s"] else "-",
                *(format_seconds(row["seconds"][bench]) for bench in benches),
                format_ratio(vs_teacher[first] if vs_teacher else None),
                format_ratio(vs_vilt[first] if vs_vilt else None),
            ]
        )
    header = ["System", "Image ms/item", "Text ms/item", "Pairs/s", *benches]
    header += [f"Speed-up vs teacher ({first})", f"Speed-up vs ViLT ({first})"]
    sizes = ", ".join(f"{name} {n:,} x {m:,}" for name, (n, m) in RANKING_BENCHMARKS.items())
    title = (
        f"**Projected time to rank {sizes}** from the rates measured above (same run, same machine): "
        "N x image + M x text + N x M pairs (cross-encoders); the dual's grid (similarities + ranks) is timed "
        "at full size on random unit vectors; a cascade adds k cross pairs per query and the cross-encoder's "
        "encoding of every item (rows marked *cross features cached* leave it out: the issue's dual + "
        "k x (N + M) cross pairs). ViLT and BLIP rows are the full-size architectures with random weights: TIMING ONLY, measured on "
        f"{payload.get('existing_itr_pairs_timed', 'a few')} pairs of a 640x480 image."
    )
    return title + "\n\n" + _table(header, rows)


def latency_table(latency: dict[str, Any]) -> str:
    encoding = latency["query_encoding"]
    rows = [
        [
            f"{row['gallery_size']:,}",
            row["backend"],
            setting_label(row),
            format_seconds(row["build_s"]),
            _number(row["search_p50_ms"], 2),
            _number(row["search_p99_ms"], 2),
            _number(row["total_p50_ms"], 2),
            _number(row["total_p99_ms"], 2),
            _number(row["recall_at_k"], 3),
            _number(row["bytes_per_vector"], 0),
        ]
        for row in latency["rows"]
    ]
    header = ["Gallery (synthetic)", "Index", "Search setting", "Build", "Search p50 ms", "Search p99 ms"]
    header += ["Total p50 ms", "Total p99 ms", f"Recall@{latency['k']} vs exact", "Bytes/vector"]
    title = (
        f"**Online latency of one text query, SYNTHETIC galleries** of {latency['dimension']}-d unit vectors "
        f"({latency['gallery']}); queries: real captions. Query encoding (text tower + head) p50 "
        f"{encoding['p50_ms']:.2f} ms, p99 {encoding['p99_ms']:.2f} ms; total = encoding + search of the same "
        f"query, {latency['num_queries']} queries one at a time."
    )
    return title + "\n\n" + _table(header, rows)


def targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with what this run measured and whether each is met."""
    found: list[dict[str, Any]] = []
    first = next(iter(RANKING_BENCHMARKS))
    for row in payload["projection"]:
        limit = TARGETS["dual_speedup_coco"] if row["name"] == "dual student" else None
        limit = TARGETS["cascade_speedup_coco"] if row["name"].startswith("cascade") else limit
        if limit is not None and row["speedup_over_teacher"]:
            value = row["speedup_over_teacher"][first]
            text = f"{row['name']}: projected {first} speed-up over the teacher >= {limit:,.0f}x"
            found.append({"target": text, "measured": value, "met": value >= limit})
    for row in payload["ranking"]:
        if row["kind"] == "cascade" and row["rsum_pct_of_teacher"] is not None:
            text = f"{row['name']}: RSUM >= {TARGETS['cascade_rsum_pct']:.0f}% of the teacher's"
            value = row["rsum_pct_of_teacher"]
            found.append({"target": text, "measured": value, "met": value >= TARGETS["cascade_rsum_pct"]})
    latency = payload.get("latency") or {"rows": []}
    largest = max((row["gallery_size"] for row in latency["rows"]), default=0)
    for backend in ("faiss-hnsw", "faiss-ivfflat", "faiss-ivfpq"):
        rows = [r for r in latency["rows"] if r["gallery_size"] == largest and r["backend"] == backend]
        if rows:
            row = best_setting(rows)
            met = row["search_p50_ms"] <= TARGETS["latency_p50_ms"]
            met = met and row["recall_at_k"] >= TARGETS["latency_recall"]
            text = f"{largest:,} vectors, {backend}: search p50 <= 10 ms with recall@10 >= 0.95"
            value = f"{setting_label(row)}: {row['search_p50_ms']:.2f} ms, recall {row['recall_at_k']:.3f}"
            found.append({"target": text, "measured": value, "met": met})
    return found


def best_setting(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest setting that reaches the recall target, else the one with the highest recall."""
    good = [row for row in rows if row["recall_at_k"] >= TARGETS["latency_recall"]]
    if good:
        return min(good, key=lambda row: row["search_p50_ms"])
    return max(rows, key=lambda row: (row["recall_at_k"], -row["search_p50_ms"]))


def targets_table(items: list[dict[str, Any]]) -> str:
    rows = [
        [item["target"], item["measured"] if isinstance(item["measured"], str) else _number(item["measured"])]
        + ["met" if item["met"] else "NOT met"]
        for item in items
    ]
    return "**Targets**\n\n" + _table(["Target", "Measured", ""], rows)


def markdown(payload: dict[str, Any]) -> str:
    parts = [machine_line(payload["machine"]), ranking_table(payload)]
    if payload.get("projection"):
        parts.append(projection_table(payload))
    if payload.get("latency"):
        parts.append(latency_table(payload["latency"]))
    parts.append(targets_table(payload["targets"]))
    parts.append(f"Command: `{payload['command']}`")
    return "\n\n".join(parts) + "\n"


def plot(payload: dict[str, Any], path: Path) -> None:
    """RSUM against the measured time to rank the split, one labelled point per system, log-scale time."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=120)
    for row in payload["ranking"]:
        axes.scatter(row["total_s"], row["rsum"], s=40)
        axes.annotate(row["name"], (row["total_s"], row["rsum"]), textcoords="offset points", xytext=(5, 4))
    split = payload["split"]
    axes.set_xscale("log")
    axes.margins(x=0.25, y=0.1)  # room for the labels of the rightmost and topmost points
    axes.set_xlabel(f"time to rank the {split['data']} {split['name']} split from raw inputs (s, log scale)")
    axes.set_ylabel("RSUM")
    axes.set_title(
        f"{split['num_images']} images x {split['num_captions']} captions, {payload['machine_short']}"
    )
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)


def write_outputs(payload: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write speed.json, speed.md and speed_plot.png under ``out``; returns their paths."""
    paths = {"json": out / "speed.json", "markdown": out / "speed.md", "plot": out / "speed_plot.png"}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths["json"], payload)
    write_text_atomic(paths["markdown"], markdown(payload))
    plot(payload, paths["plot"])
    return paths


def write_top_images(runs: list[SystemRun], split: dict[str, Any], k: int, out: Path) -> Path:
    """``top_images.json``: each caption's ``k`` best image rows per system (best first), from the scores the
    ranking table was measured on; systems that rank no full grid (cascades) are left out."""
    path = out / "top_images.json"
    k = min(k, TOP_IMAGES)  # what the ranking kept
    systems = {run.name: run.top_images[:, :k].tolist() for run in runs if run.top_images is not None}
    write_json_atomic(path, {"split": split, "k": k, "text_to_image": systems}, indent=None)
    return path
