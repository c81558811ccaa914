"""Retention of a compressed cross student, measured on the teacher's *interaction gain* (issue 13).

A grounded teacher's score is its similarity path plus a fusion term; with the fusion removed ("paths-only") it is
a bag-like dual. What a compressed student must keep is what the fusion adds, so for a metric m (RSUM, twin group)::

    retention_m = 100 * (m(student) - m(paths-only)) / (m(teacher) - m(paths-only))      (%)

100% = the student keeps the whole gain; 0% = no better than the teacher without its fusion; negative = worse.
Undefined (None) when the teacher gains nothing on m (its fusion does no work there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

RETENTION_METRICS = ("rsum", "twin_group")  # the two numbers issue 13 asks retention on


def interaction_gain_retention(student: float, teacher: float, paths_only: float) -> float | None:
    """``100 * (student - paths_only) / (teacher - paths_only)``, or None when the teacher's gain is zero."""
    gain = teacher - paths_only
    if gain == 0:
        return None
    return 100.0 * (student - paths_only) / gain


def retention_table(
    student: Mapping[str, float],
    teacher: Mapping[str, float],
    paths_only: Mapping[str, float],
    metrics: Iterable[str] = RETENTION_METRICS,
) -> dict[str, float | None]:
    """``{"<metric>_gain_retention": %}`` for each metric present in all three metric dicts; also the plain
    ``"<metric>_retention"`` (student / teacher, %) for comparison with the usual definition."""
    table: dict[str, float | None] = {}
    for name in metrics:
        if name in student and name in teacher and name in paths_only:
            table[f"{name}_gain_retention"] = interaction_gain_retention(
                student[name], teacher[name], paths_only[name]
            )
            table[f"{name}_retention"] = 100.0 * student[name] / teacher[name] if teacher[name] else None
    return table
