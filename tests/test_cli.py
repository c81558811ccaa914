"""The `dcd` entry points, called in-process as plain functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcd_itr.cli import build_parser, main
from test_emoji import cldr_dir  # noqa: F401  (pytest fixture)


def test_help_lists_commands_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "data" in out and "demo" in out
    with pytest.raises(SystemExit):
        main(["data", "emoji", "--help"])
    out = capsys.readouterr().out
    for option in ("--out", "--preview", "--seed", "--font", "--cldr-dir", "--quiet"):
        assert option in out


def test_every_option_has_help_text() -> None:
    parser = build_parser()
    pending = [parser]
    while pending:
        current = pending.pop()
        for action in current._actions:
            if action.dest != "help" and action.option_strings:
                assert action.help, f"{current.prog} {action.option_strings} has no help"
            if action.choices and isinstance(action.choices, dict):
                pending.extend(action.choices.values())


def test_data_emoji_and_stats(cldr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    out = tmp_path / "emoji"
    sheet = tmp_path / "sheet.png"
    code = main(
        ["data", "emoji", "--out", str(out), "--cldr-dir", str(cldr_dir), "--preview", str(sheet), "--quiet"]
    )
    assert code == 0 and sheet.is_file() and sheet.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "total" in printed and "7" in printed.splitlines()[-2]
    assert main(["data", "stats", "--data", str(out)]) == 0
    assert "read 7 records" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "--data", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert "dcd data: error:" in err and "none.json" in err and "Traceback" not in err
