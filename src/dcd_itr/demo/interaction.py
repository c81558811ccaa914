"""The share of the teacher's interaction gain a student keeps: (system - paths-only) / (teacher - paths-only),
where "paths-only" is the teacher with its fusion term removed (the same weights; its similarity path alone), on
RSUM and on the twin group score of the scenes benchmark."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def interaction_gain(
    rows: list[dict[str, Any]], paths_only: dict[str, Any], label: Callable[[str], str] = str
) -> list[dict[str, Any]]:
    """Retention of the teacher's interaction gain, (system - paths-only) / (teacher - paths-only), on RSUM and
    the twin group score, for every cross-encoder and cascade row of the speed benchmark's ``rows`` (in their
    order; ``label`` names them), None where the teacher gains nothing."""
    teacher = next((row for row in rows if row["kind"] == "teacher"), None)
    if teacher is None:
        return []
    out = []
    for row in rows:
        if row["kind"] not in ("cross", "cascade"):
            continue
        entry: dict[str, Any] = {"name": label(row["name"])}
        for key in ("rsum", "twin_group"):
            gain = teacher["metrics"].get(key, 0.0) - paths_only.get(key, 0.0)
            if key in row["metrics"] and key in paths_only and abs(gain) > 1e-9:
                entry[key] = 100.0 * (row["metrics"][key] - paths_only[key]) / gain
            else:
                entry[key] = None
        out.append(entry)
    return out


def interaction_gain_section(
    rows: list[dict[str, Any]], paths_only: dict[str, Any], label: Callable[[str], str] = str
) -> list[str]:
    """The report's section: the paths-only and teacher scores, then each system's retention (Markdown lines)."""
    teacher = next(row for row in rows if row["kind"] == "teacher")
    lines = [
        "## Interaction gain",
        "",
        "What the teacher's fusion adds over its own similarity path (the same weights with the fusion term "
        f"removed: RSUM {paths_only['rsum']:.1f}, twin group {paths_only.get('twin_group', float('nan')):.1f}%, "
        f"against the teacher's {teacher['rsum']:.1f} and {teacher['metrics'].get('twin_group', float('nan')):.1f}%), "
        "and how much of that gain each system keeps: (system - paths-only) / (teacher - paths-only).",
        "",
        "| system | RSUM gain kept | twin group gain kept |",
        "|---|---:|---:|",
    ]
    for entry in interaction_gain(rows, paths_only, label):
        cells = ["n/a" if entry[key] is None else f"{entry[key]:.1f}%" for key in ("rsum", "twin_group")]
        lines.append(f"| {entry['name']} | " + " | ".join(cells) + " |")
    return lines
