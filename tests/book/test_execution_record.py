"""The execution record: what ``run.finish()`` leaves in a notebook, and the page the build makes of it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from llmbook.runinfo import RECORD_KEY, RECORD_MIME, note_checkpoint, start_run
from tests.book.chapters import ROOT

sys.path.insert(0, str(ROOT / "book" / "_ext"))
import llmbook_execution_record as ext  # noqa: E402


def test_the_extension_reads_the_glue_key_and_mime_type_runinfo_writes():
    assert (ext.RECORD_MIME, ext.RECORD_KEY) == (RECORD_MIME, RECORD_KEY)


def test_the_record_names_everything_the_page_shows(monkeypatch):
    monkeypatch.setenv("LLMBOOK_PROFILE", "cpu")
    run = start_run(seed=11)
    note_checkpoint(
        {"recipe": "sft", "profile": "cpu", "key": "k" * 16, "source": "cache", "metrics": {}}
    )
    record = run.record()
    for field in (
        "seconds",
        "device",
        "device_name",
        "threads",
        "torch",
        "commit",
        "seed",
        "profile",
    ):
        assert field in record, field
    assert record["seed"] == 11 and record["profile"] == "cpu"
    assert [c["recipe"] for c in record["checkpoints"]] == ["sft"]
    # A new run starts a new record.
    assert start_run(seed=0).record()["checkpoints"] == []
    with pytest.raises(TypeError):
        note_checkpoint({"recipe": object()})  # a record stays JSON


def test_finish_outside_a_kernel_prints_the_summary(capsys):
    run = start_run(seed=2)
    assert run.finish() is None
    out = capsys.readouterr().out
    assert out.startswith("Ran on ") and "seed 2" in out


def test_record_from_glue_reads_the_record_and_nothing_else():
    glue = {
        "c41_loss": {"data": {"text/plain": "1.5"}},
        RECORD_KEY: {"data": {RECORD_MIME: {"seed": 2}}, "metadata": {}},
    }
    assert ext.record_from_glue(glue) == {"seed": 2}
    assert ext.record_from_glue({RECORD_KEY: {"data": {RECORD_MIME: '{"seed": 3}'}}}) == {"seed": 3}
    assert ext.record_from_glue({"c41_loss": glue["c41_loss"]}) is None
    assert ext.record_from_glue({RECORD_KEY: {"data": {"text/plain": "x"}}}) is None


def test_checkpoint_text_shows_quality_metrics_only():
    text = ext.checkpoint_text(
        {
            "recipe": "ppo",
            "profile": "gpu",
            "key": "0123456789abcdef",
            "source": "fetched",
            "fallback": False,
            "metrics": {
                "kl": 1.0244,
                "val_accuracy": 0.4225,
                "train_seconds": 167.8,
                "val_tasks": {"a": 1},
            },
        }
    )
    assert text == "ppo (gpu, 0123456789abcdef, fetched): kl 1.02, val_accuracy 0.422"
    assert ext.row_id("book/part1/02-attention-by-hand") == "run-book-part1-02-attention-by-hand"


CHAPTER = """\
---
jupytext:
  text_representation: {{extension: .md, format_name: myst}}
kernelspec: {{display_name: Python 3, language: python, name: python3}}
---

# {title}

Some prose.

```{{code-cell}} ipython3
from llmbook.runinfo import note_checkpoint, start_run

run = start_run(seed={seed})
note_checkpoint({{"recipe": "shakespeare-byte", "profile": "cpu", "key": "9711bc3abfd23617",
                 "source": "cache", "fallback": False, "metrics": {{"val_loss": 1.8226}}}})
```

```{{code-cell}} ipython3
run.finish()
```
"""

NO_RECORD = """\
---
jupytext:
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---

# Chapter without a record

```{code-cell} ipython3
print(1 + 1)
```
"""

CONF = """\
import sys
sys.path.insert(0, {ext!r})
extensions = ["myst_nb", "llmbook_execution_record"]
project = "record test"
html_theme = "basic"
nb_execution_mode = "cache"
nb_execution_timeout = 120
nb_execution_raise_on_error = True
nb_execution_cache_path = {cache!r}
"""


def _build(src, out):
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-W", "-q", str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_record_page_lists_each_chapter_and_each_chapter_links_to_its_row(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "conf.py").write_text(
        CONF.format(ext=str(ROOT / "book" / "_ext"), cache=str(tmp_path / "cache"))
    )
    (src / "index.md").write_text("# Book\n\n```{toctree}\nchap-a\nchap-b\nrecord\n```\n")
    (src / "chap-a.md").write_text(CHAPTER.format(title="Chapter A", seed=5))
    (src / "chap-b.md").write_text(NO_RECORD)
    (src / "record.md").write_text("# Record\n\n```{execution-record}\n```\n")
    _build(src, out)

    page = (out / "record.html").read_text()
    row = re.search(r'<tr[^>]*id="run-chap-a".*?</tr>', page, re.S)
    assert row is not None, page
    cells = re.sub(r"<[^>]+>", " ", row.group(0))
    assert "Chapter A" in cells and " cpu " in cells and " 5 " in cells
    assert "shakespeare-byte (cpu, 9711bc3abfd23617, cache): val_loss 1.82" in cells
    assert re.search(r'<tr[^>]*id="run-chap-b".*?no record', page, re.S)
    assert page.index('id="run-chap-a"') < page.index('id="run-chap-b"')  # reading order
    chapter = (out / "chap-a.html").read_text()
    assert "Executed with the cpu profile on cpu" in re.sub(r"<[^>]+>", "", chapter)
    assert 'href="record.html#run-chap-a"' in chapter
    assert "Executed with" not in (out / "chap-b.html").read_text()

    # The reader sees the summary line, not the record.
    assert (
        "Ran on cpu" in chapter
        and "llmbook-run-record" not in chapter
        and "device_name" not in chapter
    )

    # A fresh build of chapters taken from the execution cache (nothing executes) has the same record.
    import shutil

    shutil.rmtree(out)
    _build(src, out)
    assert "Executed with the cpu profile on cpu" in re.sub(
        r"<[^>]+>", "", (out / "chap-a.html").read_text()
    )
    again = re.search(r'<tr[^>]*id="run-chap-a".*?</tr>', (out / "record.html").read_text(), re.S)
    assert again is not None and "9711bc3abfd23617" in again.group(0)

    # A chapter executed again (its code changed) updates the record page in an incremental build.
    (src / "chap-a.md").write_text(CHAPTER.format(title="Chapter A", seed=6))
    _build(src, out)
    row = re.search(r'<tr[^>]*id="run-chap-a".*?</tr>', (out / "record.html").read_text(), re.S)
    assert " 6 " in re.sub(r"<[^>]+>", " ", row.group(0))


def test_the_book_has_the_record_page_in_its_toc():
    import yaml

    toc = (ROOT / "_toc.yml").read_text()
    assert "book/appendix/execution-record" in toc
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "llmbook_execution_record" in config["sphinx"]["local_extensions"]
    assert "```{execution-record}" in (ROOT / "book/appendix/execution-record.md").read_text()
