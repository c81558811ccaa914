"""The demo's summary table and ``report.md``: the table, the quality-vs-speed plot, example queries, the
ablation summary when one was run, the resolved configs, package versions and the machine.

Every number in the table comes from one run of the speed benchmark (:mod:`dcd_itr.speed`): each system ranks
the whole test split from raw images and captions, towers included, and its Recall@K is computed from the scores
that timed run produced, so quality and time describe the same computation.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcd_itr.demo.interaction import interaction_gain, interaction_gain_section
from dcd_itr.io_utils import write_text_atomic
from dcd_itr.speed.common import format_ratio, format_seconds

SYSTEM_LABELS = {
    "teacher": "cross-encoder teacher",
    "cross student": "DCD compressed cross-encoder",
    "dual student": "DCD dual encoder",
}
BASELINE_NAME = "dual baseline (no teacher)"  # the bench run's name for the InfoNCE dual trained without one
METRICS = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]
HEADER = ["system", "i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "RSUM"]
HEADER += ["% of teacher", "time to rank the test split", "speed-up vs teacher"]
TWIN_KEYS = ["twin_text", "twin_image", "twin_group"]  # Winoground-style, % (chance 25 / 25 / 16.7)
TWIN_HEADER = ["twin text", "twin image", "twin group"]
PATHS_ONLY_LABEL = "teacher, fusion removed (paths only; not timed)"


def has_twin_scores(payload: dict[str, Any]) -> bool:
    return any("twin_group" in row["metrics"] for row in payload["ranking"])


def system_label(name: str) -> str:
    """The table's name of a bench row: ``cascade k=8`` -> ``cascade dual -> cross, k = 8``."""
    if name.startswith("cascade k="):
        return f"cascade dual -> cross, k = {name.removeprefix('cascade k=')}"
    return SYSTEM_LABELS.get(name, name)


def ordered_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Teacher, cross student, dual student, the cascades by k, then anything else (baselines)."""

    def place(row: dict[str, Any]) -> tuple[int, int]:
        order = list(SYSTEM_LABELS)
        if row["name"] in order:
            return order.index(row["name"]), 0
        if row["kind"] == "cascade":
            return len(order), int(row["cascade_k"] or 0)
        return len(order) + 1, 0

    return sorted(payload["ranking"], key=place)


def summary_note(payload: dict[str, Any]) -> str:
    split = payload["split"]
    return (
        f"Full ranking of the {split['data']} {split['name']} split ({split['num_images']:,} images x "
        f"{split['num_captions']:,} captions) by each system from raw images and captions (decoding, towers, "
        f"heads, every score and the ranks), measured once on {payload['machine_short']}; R@K in %, from the "
        "scores of that same timed run; RSUM = the sum of the six."
    )


def summary_table(payload: dict[str, Any], paths_only: dict[str, Any] | None = None) -> str:
    """The headline table (Markdown): R@1/5/10 both ways, RSUM, % of teacher, time to rank, speed-up; on the
    scenes benchmark also the twin text / image / group scores and the paths-only reference row."""
    twins = has_twin_scores(payload)
    header = HEADER[:8] + (TWIN_HEADER if twins else []) + HEADER[8:]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    teacher_rsum = next((row["rsum"] for row in payload["ranking"] if row["kind"] == "teacher"), None)
    for row in ordered_rows(payload):
        share = row["rsum_pct_of_teacher"]
        cells = [f"{row['metrics'][key]:.1f}" for key in METRICS] + [f"{row['rsum']:.1f}"]
        cells += [_twin_cell(row["metrics"], key) for key in TWIN_KEYS] if twins else []
        cells += ["n/a" if share is None else f"{share:.1f}%", format_seconds(row["total_s"])]
        cells.append(format_ratio(row["speedup_over_teacher"]))
        lines.append(f"| {system_label(row['name'])} | " + " | ".join(cells) + " |")
    if paths_only is not None:
        share = f"{100 * paths_only['rsum'] / teacher_rsum:.1f}%" if teacher_rsum else "n/a"
        cells = [f"{paths_only[key]:.1f}" for key in METRICS] + [f"{paths_only['rsum']:.1f}"]
        cells += [_twin_cell(paths_only, key) for key in TWIN_KEYS] if twins else []
        lines.append(f"| {PATHS_ONLY_LABEL} | " + " | ".join([*cells, share, "n/a", "n/a"]) + " |")
    return "\n".join(lines) + "\n"


def _twin_cell(metrics: dict[str, Any], key: str) -> str:
    return f"{metrics[key]:.1f}" if key in metrics else "n/a"


def metrics_by_system(
    payload: dict[str, Any], paths_only: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """``test_metrics.json``: each system's metrics and time, keyed by its table name (plus the paths-only
    reference and the interaction-gain retention when given)."""
    systems = {
        system_label(row["name"]): {
            **row["metrics"],
            "total_s": row["total_s"],
            "speedup_over_teacher": row["speedup_over_teacher"],
        }
        for row in ordered_rows(payload)
    }
    if paths_only is not None:
        systems[PATHS_ONLY_LABEL] = paths_only
        for entry in interaction_gain(ordered_rows(payload), paths_only, system_label):
            systems[entry["name"]] |= {
                "interaction_gain_kept_rsum_pct": entry["rsum"],
                "interaction_gain_kept_twin_group_pct": entry["twin_group"],
            }
    return systems


@dataclass
class ReportInputs:
    """Everything ``report.md`` shows; paths are files in or below the results folder unless noted."""

    speed: dict[str, Any]  # the speed benchmark's payload (speed.json)
    plot: Path  # speed_plot.png
    speed_markdown: Path  # speed.md
    examples_sheet: Path  # the example-query contact sheet
    examples: list[dict[str, Any]]  # demo.examples.correct_positions rows
    example_k: int
    configs: dict[str, Path]  # stage -> the config.yaml it saved
    environment: dict[str, Any]  # demo.environment.describe_machine(), taken when the speed stage ran
    packages: dict[str, str]  # demo.environment.package_versions(), same moment
    stages: list[dict[str, Any]]  # {"name", "seconds", "finished"} of each stage's computation in use
    search_commands: list[str]
    command: str = "dcd demo"  # how the demo was started
    paths_only: dict[str, Any] | None = None  # test metrics of the teacher without its fusion term (scenes)
    teacher_note: str | None = None  # where the teacher came from when it was not trained by this run
    test_sheet: Path | None = None  # contact sheet of test images
    ablation: Path | None = None  # benchmarks/results/ablation.md, when it exists
    extra_files: dict[str, Path] = field(default_factory=dict)  # label -> file, listed under "Files"


def _link(path: Path, report: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(report).resolve().parent)).as_posix()


def _demote_headings(markdown: str, levels: int = 2) -> str:
    """Put another file's headings under this report's (``# x`` -> ``### x``)."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", markdown, flags=re.MULTILINE)


def _examples_section(inputs: ReportInputs, path: Path) -> list[str]:
    names = list(inputs.examples[0]["places"]) if inputs.examples else []
    twins = bool(inputs.examples) and "twin_places" in inputs.examples[0]
    lines = [
        "## Example queries",
        "",
        f"Text queries (test captions spread evenly through the split, not picked by results) with the top "
        f"{inputs.example_k} images of each system, best first, from the same scores as the table; the correct "
        "image is framed in green, and shown first in blue"
        + (
            ", with its swapped twin (the same scene, the two related objects exchanged) beside it in orange, "
            "framed in orange wherever a system ranks it. Each cell: place of the correct scene / of its twin."
            if twins
            else "."
        ),
        "",
        f"![example queries]({_link(inputs.examples_sheet, path)})",
        "",
        "| query | "
        + " | ".join(f"{system_label(name)}: place of the correct image" for name in names)
        + " |",
        "|---|" + "---:|" * len(names),
    ]
    for row in inputs.examples:
        places = [str(row["places"][name] or f"not in top {inputs.example_k}") for name in names]
        if twins:
            twin_places = [str(row["twin_places"][name] or "-") for name in names]
            places = [f"{place} / twin {twin}" for place, twin in zip(places, twin_places, strict=True)]
        lines.append(f"| {row['caption']} | " + " | ".join(places) + " |")
    return lines


def _environment_section(inputs: ReportInputs) -> list[str]:
    machine = inputs.environment
    memory = f"{machine['memory_gib']} GiB" if machine.get("memory_gib") is not None else "unknown"
    lines = [
        "## Machine and packages",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {machine['cpu']} ({machine['architecture']}) |",
        f"| cores | {machine['logical_cores']} logical, {machine['usable_cores']} usable by this process; "
        f"torch threads {machine['torch_threads']} |",
        f"| memory | {memory} |",
        f"| OS | {machine['os']}, {machine['kernel']} |",
        f"| Python | {machine['python']} |",
        f"| accelerator | {machine['accelerator']} |",
        f"| load average (1, 5, 15 min) when the speed stage started | {machine.get('load_average_1_5_15')} |",
        "",
        "| package | version |",
        "|---|---|",
    ]
    lines += [f"| {name} | {version} |" for name, version in inputs.packages.items()]
    return lines


def _gain_lines(speed: dict[str, Any], paths_only: dict[str, Any]) -> list[str]:
    return [*interaction_gain_section(ordered_rows(speed), paths_only, system_label), ""]


def render_report(inputs: ReportInputs, path: Path) -> str:
    """The Markdown of ``report.md`` written at ``path`` (links are relative to it)."""
    speed = inputs.speed
    total = sum(stage["seconds"] for stage in inputs.stages)
    parts = [
        "# dcd demo report",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S %z')} by `{inputs.command}`: the cross-encoder "
        "teacher, the two students distilled from it with Dynamic Contrastive Distillation (a compressed "
        "cross-encoder and a dual encoder), the dual -> cross cascade and a dual encoder trained without a "
        f"teacher, on the {speed['split']['data']} {speed['split']['name']} split."
        + (f" Teacher: {inputs.teacher_note}." if inputs.teacher_note else ""),
        "",
        "## Summary",
        "",
        summary_note(speed)
        + (
            " Twin scores (Winoground-style, %; chance 25 / 25 / 16.7): text = each scene scores its own caption "
            "above its swapped twin's, image = each caption scores its own scene above the twin, group = both."
            if has_twin_scores(speed)
            else ""
        ),
        "",
        summary_table(speed, inputs.paths_only),
        f"![RSUM against the time to rank the test split]({_link(inputs.plot, path)})",
        "",
        f"The full speed benchmark -- encoding and scoring times per system, projections to COCO-5K and "
        f"Flickr30K-1K, query latency on a synthetic gallery -- is in [speed.md]({_link(inputs.speed_markdown, path)}); "
        f"it was run as `{speed['command']}`.",
        "",
        *(_gain_lines(speed, inputs.paths_only) if inputs.paths_only else []),
        *_examples_section(inputs, path),
        "",
    ]
    if inputs.test_sheet is not None:
        parts += [
            "## The test split",
            "",
            f"![test images with their first caption]({_link(inputs.test_sheet, path)})",
            "",
        ]
    parts += ["## Search what it built", "", *[f"    {command}" for command in inputs.search_commands], ""]
    parts += ["## Ablation", ""]
    if inputs.ablation is not None and Path(inputs.ablation).is_file():
        modified = time.strftime("%Y-%m-%d %H:%M", time.localtime(Path(inputs.ablation).stat().st_mtime))
        parts += [
            f"Copied from `{inputs.ablation}` (written {modified} by `python benchmarks/ablation.py`, which the "
            "demo does not run: its students, seeds and teacher are that run's, not necessarily this demo's).",
            "",
            _demote_headings(Path(inputs.ablation).read_text(encoding="utf-8").strip()),
            "",
        ]
    else:
        parts += [
            "Not run. `python benchmarks/ablation.py --teacher <results>/teacher/best` trains each student with "
            "the `none`, `static`, `wsl` and `dcd` losses over several seeds and writes "
            "`benchmarks/results/ablation.md`; the next `dcd demo` includes it here.",
            "",
        ]
    parts += [
        "## Stages",
        "",
        "How long each stage's computation took (a stage reused by a later run keeps its first time).",
        "",
        "| stage | computed in | finished |",
        "|---|---:|---|",
        *[f"| {s['name']} | {format_seconds(s['seconds'])} | {s['finished']} |" for s in inputs.stages],
        f"| total | {format_seconds(total)} | |",
        "",
        "## Resolved configs",
        "",
    ]
    for stage, config in inputs.configs.items():
        text = Path(config).read_text(encoding="utf-8").rstrip()
        parts += [f"**{stage}** (`{_link(config, path)}`)", "", "```yaml", text, "```", ""]
    parts += _environment_section(inputs)
    if inputs.extra_files:
        parts += ["", "## Files", ""]
        parts += [
            f"- {label}: [{_link(file, path)}]({_link(file, path)})"
            for label, file in inputs.extra_files.items()
        ]
    return "\n".join(parts) + "\n"


def write_report(inputs: ReportInputs, path: Path) -> Path:
    write_text_atomic(path, render_report(inputs, path))
    return path
