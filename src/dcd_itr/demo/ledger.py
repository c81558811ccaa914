"""The stage ledger of `dcd demo`: reuse a stage only when its inputs are the ones it last finished with.

``RESULTS/stages.json`` holds, per stage, a fingerprint of each input (a resolved config, a checkpoint's sha256,
the dataset's and the feature cache's fingerprints, a benchmark's settings), the sha256 of each output file, the
stage's JSON result and how long it took. :meth:`StageLedger.run` then does one of three things:

- **reuse** -- same input fingerprints, every output file present with the recorded sha256 and the stage's own
  ``check`` (if any) passing: the recorded result is returned at once;
- **recompute after a change** -- some input differs: the stage's ``clear`` paths (outputs made from the old
  inputs, e.g. a run folder that would otherwise be resumed) are removed, then the stage runs;
- **run** -- no record (first run, or a run interrupted before the stage finished; whatever the stage left on
  disk is resumed by the stage itself), or outputs missing or modified.

A record is dropped before its stage runs again and written only when the stage finishes, so an interrupted run
never leaves a record that vouches for partial outputs.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcd_itr.io_utils import file_sha256, write_json_atomic

LEDGER_FILE = "stages.json"
FORMAT_VERSION = 1

Outputs = (
    Sequence[Path] | Callable[[Any], Sequence[Path]]
)  # output files, or a function of the stage's result


def digest(value: Any) -> str:
    """sha256 of a JSON-able value (dict keys sorted; paths and other objects as their ``str``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | Path) -> str | None:
    """sha256 of a file's bytes, or None when it does not exist."""
    return file_sha256(path) if Path(path).is_file() else None


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process and of the child processes it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _json_value(value: Any) -> Any:
    """``value`` as it reads back from the ledger (paths become strings, tuples lists)."""
    return json.loads(json.dumps(value, default=str))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass
class StageOutcome:
    """What one stage did in this run."""

    name: str
    reused: bool
    seconds: float  # wall time in this run: the reuse check, or the computation
    computed_seconds: float  # how long the computation whose outputs are in use took
    finished: str  # when that computation finished


class StageLedger:
    """Per-stage records in ``path``; see the module docstring."""

    def __init__(self, path: str | Path, log: Callable[[str], None] = print) -> None:
        self.path, self.log = Path(path), log
        self.records: dict[str, dict[str, Any]] = self._read()
        self.outcomes: list[StageOutcome] = []

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:  # unreadable: every stage checks its own outputs again
            self.log(f"{self.path}: unreadable ({error}); no stage is reused without running")
            return {}
        stages = payload.get("stages") if isinstance(payload, dict) else None
        if not isinstance(stages, dict) or payload.get("format") != FORMAT_VERSION:
            return {}
        return {name: record for name, record in stages.items() if isinstance(record, dict)}

    def _write(self) -> None:
        write_json_atomic(self.path, {"format": FORMAT_VERSION, "stages": self.records})

    def run(
        self,
        name: str,
        inputs: dict[str, Any],
        action: Callable[[], Any],
        outputs: Outputs = (),
        clear: Sequence[Path] = (),
        check: Callable[[Any], bool] | None = None,
    ) -> Any:
        """Reuse stage ``name`` or run ``action`` (see the module docstring); returns the stage's JSON result.

        ``inputs``: name -> any JSON-able value the outputs depend on (hashed here, so a config dict or a
        checkpoint's sha256 both do). ``outputs``: files the stage writes (or a function of its result giving
        them). ``clear``: removed before recomputing after an input change. ``check``: an extra test of the
        recorded result (e.g. that an index was built by the current model); False means recompute.
        """
        found, result = self.lookup(name, inputs, outputs, check)
        if found:
            return result
        self.start(name, inputs, clear)
        started, cpu = time.perf_counter(), process_cpu_seconds()
        result = action()
        return self.finish(
            name, inputs, result, outputs, time.perf_counter() - started, process_cpu_seconds() - cpu
        )

    def lookup(
        self,
        name: str,
        inputs: dict[str, Any],
        outputs: Outputs = (),
        check: Callable[[Any], bool] | None = None,
    ) -> tuple[bool, Any]:
        """``(True, recorded result)`` when stage ``name`` can be reused (logged as reused), else ``(False, None)``."""
        started = time.perf_counter()
        key = digest(self._wanted(inputs))
        record = self.records.get(name)
        if record is not None and record.get("key") == key:
            result = record.get("result")
            if self._intact(record, outputs) and (check is None or check(result)):
                seconds = time.perf_counter() - started
                self.log(
                    f"[{name}] reused: inputs unchanged, outputs intact (computed in {record['seconds']:.1f} s "
                    f"on {record['finished']}); done in {seconds:.1f} s"
                )
                self.outcomes.append(StageOutcome(name, True, seconds, record["seconds"], record["finished"]))
                return True, result
        return False, None

    def start(self, name: str, inputs: dict[str, Any], clear: Sequence[Path] = ()) -> None:
        """Before stage ``name`` computes: say why, remove ``clear`` after an input change, drop its record."""
        wanted = self._wanted(inputs)
        record = self.records.get(name)
        if record is not None and record.get("key") == digest(wanted):
            self.log(f"[{name}] outputs missing or modified since it ran: recomputing")
        elif record is not None:
            before = record.get("inputs", {})
            changed = sorted(k for k in wanted.keys() | before.keys() if wanted.get(k) != before.get(k))
            self.log(f"[{name}] inputs changed ({', '.join(changed)}): recomputing")
            for path in clear:
                _remove(Path(path))
        if record is not None:
            del self.records[name]  # until it finishes again: an interrupted run vouches for nothing
            self._write()
        self.log(f"[{name}] ...")

    def finish(
        self,
        name: str,
        inputs: dict[str, Any],
        result: Any,
        outputs: Outputs,
        seconds: float,
        cpu_seconds: float | None = None,
    ) -> Any:
        """Record stage ``name`` as computed in ``seconds`` (wall) and ``cpu_seconds`` (user + system, this
        process and the workers it waited for); returns ``result`` as JSON reads it back."""
        result = _json_value(result)
        files = [Path(path) for path in (outputs(result) if callable(outputs) else outputs)]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise RuntimeError(f"stage {name!r} finished without writing {', '.join(missing)}")
        finished = time.strftime("%Y-%m-%d %H:%M:%S")
        wanted = self._wanted(inputs)
        self.records[name] = {
            "key": digest(wanted),
            "inputs": wanted,
            "outputs": {str(path): file_sha256(path) for path in files},
            "result": result,
            "seconds": seconds,
            **({"cpu_seconds": cpu_seconds} if cpu_seconds is not None else {}),
            "finished": finished,
        }
        self._write()
        cpu = f" ({cpu_seconds:.1f} CPU s)" if cpu_seconds is not None else ""
        self.log(f"[{name}] done in {seconds:.1f} s{cpu}")
        self.outcomes.append(StageOutcome(name, False, seconds, seconds, finished))
        return result

    @staticmethod
    def _wanted(inputs: dict[str, Any]) -> dict[str, str]:
        return {key: digest(value) for key, value in inputs.items()}

    @staticmethod
    def _intact(record: dict[str, Any], outputs: Outputs) -> bool:
        """Every output file exists with the sha256 recorded when the stage finished."""
        try:
            files = [str(path) for path in (outputs(record.get("result")) if callable(outputs) else outputs)]
        except (KeyError, TypeError, ValueError):  # a result of another shape: recompute
            return False
        saved = record.get("outputs", {})
        return set(files) == set(saved) and all(file_digest(path) == saved[path] for path in files)
