"""The ablation runner's results file (schema, resume, interruption, torn and corrupt lines, foreign
grids, determinism) and its summaries. Every grid trains a few steps of a one-layer model on the toy
corpus of ``tests/conftest.py``."""

import dataclasses
import json
import math

import pytest
import torch

from llmbook.experiments import ablate
from llmbook.experiments.ablate import (
    METRICS,
    ResultsError,
    TornRecordWarning,
    load_results,
    metric_table,
    run_grid,
    summarize,
)
from llmbook.experiments.grid import GRIDS
from llmbook.model.gpt import GPT
from tests.experiments.test_grid import tiny_grid

RECORD_KEYS = {
    "schema", "grid", "grid_key", "cell", "seed", "model", "train", "corpus", "metrics",
    "wall_seconds", "environment",
}  # fmt: skip


def lines_of(path):
    return path.read_text().splitlines()


def without_time(record):
    return {k: v for k, v in record.items() if k != "wall_seconds"}


@pytest.fixture
def results(toy_zoo, tmp_path):
    """A finished tiny grid: (grid, results file, records)."""
    grid, out = tiny_grid(), tmp_path / "runs" / "tiny.jsonl"
    return grid, out, run_grid(grid, out, progress=False, threads=1)


def test_each_line_is_one_whole_record_of_the_documented_schema(results):
    grid, out, records = results
    threads = torch.get_num_threads()
    lines = lines_of(out)
    assert [json.loads(line) for line in lines] == records  # what the caller got is what is on disk
    assert [(r["cell"], r["seed"]) for r in records] == [
        ("baseline", 0), ("baseline", 1), ("rope", 0), ("rope", 1)
    ]  # fmt: skip
    for r in records:
        assert set(r) == RECORD_KEYS and set(r["metrics"]) == set(METRICS)
        assert r["schema"] == 1 and r["grid"] == "tiny" and r["grid_key"] == grid.key
        assert r["model"] == grid.model_config(r["cell"]).to_dict()
        assert (
            r["train"] == grid.train_config(r["seed"]).to_dict() and r["train"]["seed"] == r["seed"]
        )
        m = r["metrics"]
        assert m["val_bpb"] == pytest.approx(m["val_loss"] / math.log(2), rel=1e-12)
        assert 0 < m["val_loss"] < 6 and 0 < m["final_train_loss"] < 6
        assert m["tokens"] == 3 * 4 * 16
        assert m["params"] == GPT(grid.model_config(r["cell"])).num_params()
        assert r["corpus"]["name"] == "toy" and r["corpus"]["origin"] == "mirror"
        assert r["corpus"]["val_tokens"] == 128
        assert r["environment"]["threads"] == 1 and r["environment"]["device"] == "cpu"
        assert r["wall_seconds"] > 0
    assert torch.get_num_threads() == threads  # threads=1 was undone


def test_a_second_call_runs_nothing_and_returns_the_same_records(results):
    grid, out, records = results
    before = out.read_bytes()
    ran = []
    assert run_grid(grid, out, progress=False, on_result=ran.append) == records
    assert ran == [] and out.read_bytes() == before
    assert run_grid(grid, out, cells=["rope"], seeds=[1], progress=False) == [records[3]]
    assert load_results(out) == records


def test_an_interrupted_grid_resumes_and_keeps_the_finished_run_unchanged(toy_zoo, tmp_path):
    grid, out = tiny_grid(), tmp_path / "tiny.jsonl"
    threads = torch.get_num_threads()

    class Killed(Exception):
        pass

    def kill(record):
        raise Killed(record["cell"])

    with pytest.raises(Killed):
        run_grid(grid, out, progress=False, threads=1, on_result=kill)
    assert torch.get_num_threads() == threads
    (first,) = lines_of(out)
    ran = []
    records = run_grid(grid, out, progress=False, threads=1, on_result=ran.append)
    assert [(r["cell"], r["seed"]) for r in ran] == [("baseline", 1), ("rope", 0), ("rope", 1)]
    assert lines_of(out)[0] == first and records[0] == json.loads(first)
    assert len(lines_of(out)) == 4


def test_a_torn_last_line_is_dropped_with_a_warning_and_its_run_trained_again(results):
    grid, out, records = results
    whole = out.read_bytes()
    out.write_bytes(whole[:-40])  # a kill in the middle of the last write
    with pytest.warns(TornRecordWarning, match="tiny.jsonl:4"):
        assert load_results(out) == records[:3]
    assert out.read_bytes() == whole[:-40]  # reading never changes the file
    ran = []
    with pytest.warns(TornRecordWarning):
        again = run_grid(grid, out, progress=False, threads=1, on_result=ran.append)
    assert [(r["cell"], r["seed"]) for r in ran] == [("rope", 1)]
    assert [without_time(r) for r in again] == [without_time(r) for r in records]
    assert lines_of(out)[:3] == whole.decode().splitlines()[:3] and len(lines_of(out)) == 4


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda lines: ["{not json"] + lines[1:], ":1: not a JSON line"),
        (lambda lines: lines[:1] + ["[1, 2]"] + lines[2:], ":2: not a JSON object"),
        (lambda lines: lines[:2] + [lines[2].replace('"schema": 1', '"schema": 2')] + lines[3:],
         ":3: schema: expected 1"),
        (lambda lines: [lines[0].replace('"val_bpb"', '"bpb"')] + lines[1:],
         ":1: metrics.val_bpb: missing"),
        (lambda lines: lines + [lines[0]], ":5: cell 'baseline' seed 0 already on line 1"),
    ],
)  # fmt: skip
def test_a_corrupt_line_before_the_end_is_an_error_naming_file_and_line(results, corrupt, message):
    grid, out, _ = results
    out.write_text("\n".join(corrupt(lines_of(out))) + "\n")
    before = out.read_bytes()
    with pytest.raises(ResultsError, match=f"tiny.jsonl{message}"):
        load_results(out)
    with pytest.raises(ResultsError, match=f"tiny.jsonl{message}"):
        run_grid(grid, out, progress=False)
    assert out.read_bytes() == before


def test_results_of_another_grid_or_corpus_text_are_refused(results):
    grid, out, _ = results
    before = out.read_bytes()
    longer = tiny_grid(train=dict(max_steps=4, batch_size=4, warmup_steps=1, eval_interval=0))
    assert longer.key != grid.key
    with pytest.raises(ResultsError, match=rf"tiny.jsonl:1: .*key {grid.key}.* key {longer.key}"):
        run_grid(longer, out, progress=False)
    assert out.read_bytes() == before  # refused before anything ran
    lines = lines_of(out)
    foreign = [lines[0]] + [line.replace(grid.key, "0" * 16) for line in lines[1:]]
    out.write_text("\n".join(foreign) + "\n")
    with pytest.raises(ResultsError, match="tiny.jsonl:2: grid key 0000000000000000 differs"):
        load_results(out)
    record = json.loads(lines[0])
    record["corpus"]["sha256"] = "f" * 64
    out.write_text(json.dumps(record) + "\n")
    with pytest.raises(ResultsError, match="tiny.jsonl:1: trained on other text"):
        run_grid(grid, out, progress=False)


def test_the_same_grid_twice_gives_identical_records_but_for_the_time(toy_zoo, tmp_path):
    grid = dataclasses.replace(GRIDS["smoke"], corpus="toy")
    first = run_grid(grid, tmp_path / "a.jsonl", progress=False, threads=1)
    second = run_grid(grid, tmp_path / "b.jsonl", progress=False, threads=1)
    assert len(first) == 4
    assert [without_time(r) for r in first] == [without_time(r) for r in second]
    # Seeds differ, and each seed gives both cells the same batches but its own initial weights.
    assert first[0]["metrics"]["val_loss"] != first[1]["metrics"]["val_loss"]


def test_run_grid_refuses_unknown_cells_seeds_and_threads(toy_zoo, tmp_path):
    grid, out = tiny_grid(), tmp_path / "x.jsonl"
    with pytest.raises(ValueError, match="^cells: 'nope' is not in the grid"):
        run_grid(grid, out, cells=["nope"], progress=False)
    with pytest.raises(ValueError, match="^seeds: 7 is not in the grid"):
        run_grid(grid, out, seeds=[0, 7], progress=False)
    with pytest.raises(ValueError, match="^threads:"):
        run_grid(grid, out, threads=0, progress=False)
    assert not out.exists()


def _record(cell, seed, value, key="k" * 16, params=100):
    metrics = dict.fromkeys(METRICS, 1.0) | {"val_bpb": value, "params": params}
    return {"grid_key": key, "cell": cell, "seed": seed, "metrics": metrics}


def test_summarize_gives_intervals_and_paired_differences_per_cell():
    records = [
        _record("baseline", 0, 3.0), _record("baseline", 1, 3.2), _record("baseline", 2, 3.4),
        _record("rope", 0, 2.5), _record("rope", 1, 2.7), _record("rope", 2, 2.8, params=90),
        _record("alone", 0, 1.0),
    ]  # fmt: skip
    rows = summarize(records)
    assert [r["cell"] for r in rows] == ["baseline", "rope", "alone"]
    base, rope, alone = rows
    assert base["mean"] == pytest.approx(3.2) and base["n"] == 3 and base["diff_mean"] is None
    assert base["distinguishable"] is None and base["sd"] == pytest.approx(0.2)
    assert base["half_width"] == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-6)
    # rope - baseline per seed: -0.5, -0.5, -0.6; tight although the cells' own intervals overlap.
    assert rope["diff_mean"] == pytest.approx(-1.6 / 3) and rope["distinguishable"] is True
    assert rope["diff_high"] < 0 and rope["params"] == 90
    assert alone["half_width"] == math.inf and alone["distinguishable"] is False
    assert summarize(records, baseline=None)[1]["diff_mean"] is None
    assert metric_table(records)["rope"] == {0: 2.5, 1: 2.7, 2: 2.8}
    with pytest.raises(ValueError, match="^metric:"):
        summarize(records, metric="accuracy")
    with pytest.raises(ValueError, match="^baseline: no records of cell 'base'"):
        summarize(records, baseline="base")
    with pytest.raises(ValueError, match="^records: come from more than one grid"):
        metric_table(records + [_record("rope", 5, 1.0, key="x" * 16)])
    with pytest.raises(ValueError, match="^records: cell 'rope' seed 0 twice"):
        metric_table(records + [_record("rope", 0, 1.0)])


def test_the_module_names_its_schema_version():
    assert ablate.SCHEMA == 1


def test_a_diverged_run_is_named_and_the_runs_before_it_are_kept(toy_zoo, tmp_path, monkeypatch):
    import llmbook.train.loop as loop

    grid, out = tiny_grid(), tmp_path / "tiny.jsonl"
    real_train = loop.train
    calls = []

    def train_that_diverges_second(*args, **kwargs):
        history = real_train(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            history.val_loss[-1] = math.nan
        return history

    monkeypatch.setattr(loop, "train", train_that_diverges_second)
    with pytest.raises(ValueError, match=r"^cells\.baseline: seed 1: training diverged"):
        run_grid(grid, out, progress=False, threads=1)
    assert [(r["cell"], r["seed"]) for r in load_results(out)] == [("baseline", 0)]
