#!/usr/bin/env bash
# Time the README's quick start: `make install`, then `make demo`, then a second `make demo` (every stage reused),
# each under /usr/bin/time; then each stage's wall and CPU seconds from results/demo_scenes/stages.json.
# For the "bare machine" number run `make clean` first (it deletes .venv, data/, results/ and cache/).
#   bash scripts/time_demo.sh [OUT_DIR]        (default demo_timing/; DEMO_ARGS passes through to make demo)
set -euo pipefail
out=${1:-demo_timing}
mkdir -p "$out"
clock() { /usr/bin/time -f "%e s wall, %U s user, %S s system" -o "$out/$1.time" "${@:2}"; }
uptime | tee "$out/load_before.txt"
clock install make install 2>&1 | tee "$out/install.log"
clock demo make demo DEMO_ARGS="${DEMO_ARGS:-}" 2>&1 | tee "$out/demo.log"
cp results/demo_scenes/stages.json "$out/stages_first_run.json"
clock rerun make demo DEMO_ARGS="${DEMO_ARGS:-}" 2>&1 | tee "$out/rerun.log"
uptime | tee "$out/load_after.txt"
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
stages = json.loads((out / "stages_first_run.json").read_text())["stages"]
lines = ["| stage | wall s | CPU s |", "|---|---:|---:|"]
for name, record in stages.items():
    cpu = record.get("cpu_seconds")
    lines.append(f"| {name} | {record['seconds']:.1f} | {'' if cpu is None else f'{cpu:.1f}'} |")
for step in ("install", "demo", "rerun"):
    lines.append(f"\n{step}: {(out / (step + '.time')).read_text().strip()}")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
