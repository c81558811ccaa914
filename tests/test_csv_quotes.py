"""An unterminated CSV quote never swallows rows silently (issue 16, item 3).

Python's csv module reads a field that opens a quote and never closes it up to the end of the file: every later
row becomes part of one caption. A quoted field that spans lines is therefore an error naming the line where
the row starts, or a skipped, counted and listed record under ``skip_bad_records``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_image
from dcd_itr.cli import main
from dcd_itr.data.pairs import read_pairs
from dcd_itr.errors import DataError


def write_csv(folder: Path, body: str) -> Path:
    for index in range(5):
        make_image(folder / f"{index}.png")
    path = folder / "pairs.csv"
    path.write_text("image,caption,split\n" + body)
    return path


ROWS = (
    '0.png,a red square,test\n1.png,"an unterminated quote,test\n2.png,a blue square,test\n3.png,more,test\n'
)


def test_unterminated_quote_is_an_error_naming_its_line(tmp_path):
    path = write_csv(tmp_path, ROWS)
    with pytest.raises(DataError, match=r"pairs\.csv: line 3: a quoted field spans lines 3-5"):
        read_pairs(path)


def test_unterminated_quote_is_counted_and_listed_when_skipping(tmp_path):
    splits, report = read_pairs(write_csv(tmp_path, ROWS), skip_bad_records=True)
    assert report.records_read == 1 and len(report.skipped) == 1
    assert "line 3" in report.skipped[0] and "unterminated quote" in report.skipped[0]
    assert splits["test"].captions == ["a red square"]


def test_quoted_fields_on_one_line_still_read(tmp_path):
    path = write_csv(tmp_path, '0.png,"a square, red",test\n"1.png","say ""hi""",test\n')
    splits, report = read_pairs(path)
    assert splits["test"].captions == ["a square, red", 'say "hi"'] and report.records_read == 2


def test_cli_reports_the_line_not_a_single_record(tmp_path, capsys):
    path = write_csv(tmp_path, ROWS)
    assert main(["data", "stats", "--data", str(path)]) == 2
    assert "line 3: a quoted field spans lines" in capsys.readouterr().err
    assert main(["data", "stats", "--data", str(path), "--skip-bad-records"]) == 0
    assert "read 1 records, skipped 1 bad records" in capsys.readouterr().out
