"""The speed benchmark on the demo's models (issue: fast search in production, "The speed benchmark").

    python benchmarks/speed.py [any `dcd bench` option, e.g. --threads 1 --latency-sizes 10000 100000]

Runs `dcd bench` with the paths `make demo` writes -- teacher, DCD cross-encoder and dual students, the emoji
benchmark -- unless the command line names others. Writes benchmarks/results/speed.json, speed.md (the README's
tables) and speed_plot.png. Takes tens of minutes on 2 CPU cores, mostly the teacher's full ranking and the 1M
galleries (`--latency-sizes 10000 100000` skips the latter).
"""

from __future__ import annotations

import sys

from dcd_itr.cli import main as dcd_main

DEFAULTS = {  # where `make demo` (dcd demo) leaves the models and the dataset
    "--teacher": "results/demo/teacher/best",
    "--cross": "results/demo/dcd_cross/best",
    "--dual": "results/demo/dcd_dual/best",
    "--data": "data/emoji",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    for flag, value in DEFAULTS.items():
        if flag not in args:
            args += [flag, value]
    return dcd_main(["bench", *args])


if __name__ == "__main__":
    sys.exit(main())
