"""The README's "Python API" programs: each block equals its file in examples/, and both files run, pointed at the
tiny Karpathy fixture through environment variables (the real packaged towers: marked slow)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from helpers import write_karpathy_fixture

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [ROOT / "examples" / "rank_with_student.py", ROOT / "examples" / "distill_own_teacher.py"]


def python_api_blocks() -> list[str]:
    """The ```python blocks of the README's "### Python API" subsection, in order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n### Python API\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_readme_blocks_are_the_example_files() -> None:
    blocks = python_api_blocks()
    assert len(blocks) == len(EXAMPLES)
    for block, path in zip(blocks, EXAMPLES, strict=True):
        assert block == path.read_text(encoding="utf-8"), f"README block differs from {path.name}"


@pytest.mark.slow
def test_examples_distil_an_own_teacher_then_rank_with_the_student(tmp_path, monkeypatch, capsys) -> None:
    data = write_karpathy_fixture(tmp_path / "data")
    monkeypatch.setenv("DCD_DATA", str(data))
    monkeypatch.setenv("DCD_WORK", str(tmp_path / "work"))
    runpy.run_path(str(EXAMPLES[1]), run_name="__main__")
    student = tmp_path / "work" / "student" / "best"
    assert (student / "model.safetensors").is_file()
    assert f"student in {tmp_path / 'work'}/student/best, val RSUM" in capsys.readouterr().out

    monkeypatch.setenv("DCD_STUDENT", str(student))
    monkeypatch.setenv("DCD_IMAGES", str(tmp_path / "data" / "imgs"))
    runpy.run_path(str(EXAMPLES[0]), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["red heart", "smiling face with sunglasses", "dog face"]
    assert all(len(line.split(": ")[1].split(", ")) == 3 for line in lines)  # the top 3 of 8 images each
