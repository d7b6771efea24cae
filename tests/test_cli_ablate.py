"""``llmbook ablate``: the summary lines and the JSON last line, resuming, and exit statuses. The smoke
grid runs on the toy corpus of ``tests/conftest.py``."""

import dataclasses
import json

import pytest

from llmbook.cli import build_parser, main
from llmbook.experiments.grid import GRIDS


@pytest.fixture
def smoke(toy_zoo, monkeypatch):
    """The smoke grid on the toy corpus; returns (grid, the default results file)."""
    grid = dataclasses.replace(GRIDS["smoke"], corpus="toy")
    monkeypatch.setitem(GRIDS, "smoke", grid)
    return grid, toy_zoo / "ablate" / f"smoke-{grid.key}.jsonl"


def _strict(text):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def run(argv, capsys):
    """(exit status, stdout lines before the last, the last line as JSON, stderr)."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return status, lines[:-1], _strict(lines[-1]), captured.err


def test_ablate_prints_each_cell_and_ends_with_json_then_resumes(smoke, capsys):
    grid, out = smoke
    argv = ["ablate", "--grid", "smoke", "--threads", "1", "--no-progress"]
    status, table, summary, err = run(argv, capsys)
    assert status == 0 and "Traceback" not in err
    assert summary["command"] == "ablate" and summary["grid"] == "smoke"
    assert summary["key"] == grid.key and summary["out"] == str(out) and out.is_file()
    assert (summary["ran"], summary["reused"], summary["runs"]) == (4, 0, 4)
    assert set(summary["cells"]) == {"baseline", "rope"} and set(summary["differences"]) == {"rope"}
    for cell in summary["cells"].values():
        assert cell["n"] == 2 and cell["low"] <= cell["mean"] <= cell["high"]
    diff = summary["differences"]["rope"]
    assert diff["low"] <= diff["mean"] <= diff["high"]
    assert diff["distinguishable"] == (diff["low"] > 0 or diff["high"] < 0)
    assert summary["seconds"] > 0
    assert (
        table[1].startswith("baseline")
        and f"{summary['cells']['baseline']['mean']:.4f}" in table[1]
    )
    assert table[2].startswith("rope") and "vs baseline" in table[2]

    status, _, again, _ = run(argv, capsys)
    assert status == 0 and (again["ran"], again["reused"]) == (0, 4)
    assert again["cells"] == summary["cells"] and again["differences"] == summary["differences"]


def test_one_cell_and_one_seed_give_an_unbounded_interval_written_as_null(smoke, tmp_path, capsys):
    out = tmp_path / "one.jsonl"
    argv = ["ablate", "--grid", "smoke", "--cells", "rope", "--seeds", "1", "--out", str(out)]
    status, table, summary, _ = run(argv + ["--no-progress"], capsys)
    assert status == 0 and summary["out"] == str(out)
    assert (summary["ran"], summary["runs"]) == (1, 1) and summary["differences"] == {}
    assert summary["cells"]["rope"]["n"] == 1
    assert summary["cells"]["rope"]["low"] is None and summary["cells"]["rope"]["high"] is None
    assert "± inf" in table[-1]


@pytest.mark.parametrize(
    "args, names",
    [
        (["--grid", "nope"], "--grid: unknown grid 'nope'"),
        (["--cells", "baseline,nope"], "--cells: 'nope' is not in the grid"),
        (["--seeds", "0,7"], "--seeds: 7 is not in the grid"),
        (["--seeds", "zero"], "--seeds: 'zero' is not an integer"),
        (["--threads", "0"], "--threads: must be a positive integer"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_naming_the_argument(smoke, capsys, args, names):
    grid, out = smoke
    status, _, summary, err = run(["ablate", "--grid", "smoke", *args], capsys)
    assert status == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("llmbook: error:")]
    assert len(errors) == 1 and names in errors[0]
    assert set(summary) == {"error", "type"} and summary["type"] == "UsageError"
    assert not out.exists()  # nothing ran


def test_a_corrupt_results_file_exits_1_naming_the_file_and_line(smoke, tmp_path, capsys):
    out = tmp_path / "broken.jsonl"
    out.write_text('{"schema": 1}\n')
    status, _, summary, err = run(["ablate", "--grid", "smoke", "--out", str(out)], capsys)
    assert status == 1 and "Traceback" not in err
    assert f"{out}:1: grid: missing" in summary["error"] and summary["type"] == "ResultsError"
    assert out.read_text() == '{"schema": 1}\n'


def test_the_help_lists_ablate():
    assert "ablate" in build_parser().format_help()
