"""Sphinx extension: the execution record, the book's answer to "what produced these numbers?".

Every chapter ends with :meth:`llmbook.runinfo.RunInfo.finish`, which leaves the run's record in the
executed notebook (glue key :data:`llmbook.runinfo.RECORD_KEY`): wall time, device, threads, torch,
commit, seed, profile, and the zoo checkpoints it used with their keys and metrics. The record travels
with the executed notebook through the build's execution cache, so a chapter that was not executed
again keeps the record of the run that produced its outputs.

When a notebook has been read (and executed, or matched in the cache), this extension takes the record
from the glue data MyST-NB writes to ``<build>/jupyter_execute/<doc>.glue.json`` (``finish`` leaves it
as a hidden glue output), and the execution data MyST-NB keeps (the notebook's own wall time, how and
when it ran). Then:

- the ``{execution-record}`` directive becomes a table with one row per chapter, in reading order,
  each row with the anchor :func:`row_id`;
- every chapter gets, under its title, a line saying which profile it ran with, where and how long,
  linked to its row.

The record page is rebuilt whenever any chapter was read again.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

RECORD_MIME = "application/vnd.llmbook.run+json"  # llmbook.runinfo.RECORD_MIME (a test checks)
RECORD_KEY = "llmbook-run-record"  # llmbook.runinfo.RECORD_KEY (a test checks)
# Metrics shown for a checkpoint: the quality ones; timings, sizes and nested breakdowns stay in
# the notebook's record.
_SHOWN_METRIC = re.compile(r"(loss|accuracy|kl|score)")


class execution_record_table(nodes.General, nodes.Element):
    """Where the table goes; replaced when the page is resolved."""


class ExecutionRecordDirective(SphinxDirective):
    """``{execution-record}``: the table of every chapter's run."""

    has_content = False

    def run(self):
        pages = getattr(self.env, "llmbook_record_pages", set())
        pages.add(self.env.docname)
        self.env.llmbook_record_pages = pages
        return [execution_record_table("")]


def row_id(docname: str) -> str:
    """The HTML id of a chapter's row: ``run-`` and the docname with ``/`` as ``-``."""
    return "run-" + re.sub(r"[^A-Za-z0-9_-]", "-", docname)


def record_from_glue(glue: dict) -> dict | None:
    """The run record in a notebook's glue data (a dict read from MyST-NB's ``<doc>.glue.json``), or None.

    :param glue: glue key -> the output that holds its data.
    :returns: the record :meth:`llmbook.runinfo.RunInfo.finish` left, when there is one.
    """
    output = glue.get(RECORD_KEY)
    if not isinstance(output, dict):
        return None
    value = output.get("data", {}).get(RECORD_MIME)
    if isinstance(value, str):  # a JSON mime value written as text
        value = json.loads(value)
    return value if isinstance(value, dict) else None


def _doc_record(app, docname: str) -> dict | None:
    # MyST-NB writes the glue data of every notebook it reads (executed now, or merged from the
    # execution cache) to <build>/jupyter_execute/<doc>.glue.json; the .ipynb it writes beside it
    # lacks the outputs of a cached notebook, so the record is taken from the glue data.
    from myst_nb.sphinx_ import NbMetadataCollector

    if not NbMetadataCollector.get_doc_data(app.env).get(docname, {}).get("exec_data"):
        return None  # not a notebook, or not executed
    exec_data = NbMetadataCollector.get_exec_data(app.env, docname) or {}
    glue_file = Path(app.outdir).parent / "jupyter_execute" / (docname + ".glue.json")
    try:
        glue = json.loads(glue_file.read_text(encoding="utf-8")) if glue_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        glue = {}
    return {
        "record": record_from_glue(glue),
        "runtime": exec_data.get("runtime"),
        "method": exec_data.get("method"),
        "mtime": exec_data.get("mtime"),
    }


def _on_doctree_read(app, doctree) -> None:
    env = app.env
    if not hasattr(env, "llmbook_records"):
        env.llmbook_records = {}
    entry = _doc_record(app, env.docname)
    if entry is not None:
        env.llmbook_records[env.docname] = entry


def _on_purge(app, env, docname) -> None:
    getattr(env, "llmbook_records", {}).pop(docname, None)
    getattr(env, "llmbook_record_pages", set()).discard(docname)


def _on_merge(app, env, docnames, other) -> None:
    env.llmbook_records = getattr(env, "llmbook_records", {})
    env.llmbook_records.update(
        {d: v for d, v in getattr(other, "llmbook_records", {}).items() if d in docnames}
    )
    env.llmbook_record_pages = getattr(env, "llmbook_record_pages", set()) | {
        d for d in getattr(other, "llmbook_record_pages", set()) if d in docnames
    }


def _on_outdated(app, env, added, changed, removed):
    # The table depends on every chapter: rewrite the page whenever a chapter was read again.
    if added or changed or removed:
        return [d for d in getattr(env, "llmbook_record_pages", set()) if d not in added | changed]
    return []


def _reading_order(env) -> list[str]:
    order: list[str] = []

    def walk(doc: str) -> None:
        if doc in order:
            return
        order.append(doc)
        for child in env.toctree_includes.get(doc, []):
            walk(child)

    walk(env.config.root_doc)
    return order


def _short(commit: str | None) -> str:
    if not commit:
        return "unknown"
    dirty = commit.endswith("+dirty")
    return commit[:7] + ("+dirty" if dirty else "")


def _seconds(entry: dict) -> float | None:
    runtime = entry.get("runtime")
    if isinstance(runtime, int | float):
        return float(runtime)
    record = entry.get("record") or {}
    return record.get("seconds")


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def checkpoint_text(checkpoint: dict) -> str:
    """One zoo checkpoint of a record, as the table shows it.

    :param checkpoint: an entry of a record's ``checkpoints``.
    :returns: e.g. ``"sft (cpu, 2c49dde476639fc6, cache): val_accuracy 0.143, val_loss 1.15"``.
    """
    metrics = checkpoint.get("metrics") or {}
    shown = ", ".join(
        f"{k} {_fmt(v)}"
        for k, v in sorted(metrics.items())
        if _SHOWN_METRIC.search(k) and isinstance(v, int | float) and not isinstance(v, bool)
    )
    head = (
        f"{checkpoint.get('recipe')} ({checkpoint.get('profile')}, {checkpoint.get('key')}, "
        f"{checkpoint.get('source')}{', fallback corpus' if checkpoint.get('fallback') else ''})"
    )
    return head + (f": {shown}" if shown else "")


def _cell(content) -> nodes.entry:
    entry = nodes.entry()
    if isinstance(content, nodes.Node):
        entry += content
    else:
        entry += nodes.paragraph(text=str(content))
    return entry


COLUMNS = (
    ("Chapter", 20),
    ("Profile", 6),
    ("Wall time", 7),
    ("Ran on", 20),
    ("Commit, executed", 14),
    ("Zoo checkpoints (key, source: metrics)", 33),
)


def _ran_on(record: dict) -> str:
    threads = record.get("threads")
    return (
        f"{record.get('device')}, {threads} thread{'s' * (threads != 1)}, torch {record.get('torch')}, "
        f"seed {record.get('seed')}"
    )


def _table(app, fromdoc: str) -> nodes.table:
    env = app.env
    records = getattr(env, "llmbook_records", {})
    table = nodes.table(classes=["llmbook-execution-record"])
    group = nodes.tgroup(cols=len(COLUMNS))
    table += group
    for _, width in COLUMNS:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    row = nodes.row()
    for name, _ in COLUMNS:
        row += _cell(name)
    head += row
    group += head
    body = nodes.tbody()
    group += body
    for docname in _reading_order(env):
        if docname not in records:
            continue
        entry = records[docname]
        record = entry.get("record") or {}
        if not record and docname == env.config.root_doc:
            continue  # the front page may run a cell or two without recording a run
        row = nodes.row(ids=[row_id(docname)])
        title = env.titles[docname].astext() if docname in env.titles else docname
        link = nodes.reference("", title, internal=True)
        try:
            link["refuri"] = app.builder.get_relative_uri(fromdoc, docname)
        except Exception:  # a builder without URIs (text, latex): the title alone
            link = nodes.Text(title)
        para = nodes.paragraph()
        para += link
        row += _cell(para)
        if not record:
            row += _cell("no record: the chapter did not call run.finish()")
            for _ in COLUMNS[2:]:
                row += _cell("")
            body += row
            continue
        seconds = _seconds(entry)
        checkpoints = record.get("checkpoints") or []
        items = nodes.bullet_list()
        for c in checkpoints:
            items += nodes.list_item("", nodes.paragraph(text=checkpoint_text(c)))
        row += _cell(record.get("profile", "?"))
        row += _cell("?" if seconds is None else f"{seconds:.1f} s")
        row += _cell(_ran_on(record))
        when = nodes.paragraph()
        when += nodes.literal(text=_short(record.get("commit")))
        mtime = entry.get("mtime")
        when += nodes.Text(f", {_date(mtime) if mtime else 'when unknown'}")
        row += _cell(when)
        row += _cell(items if checkpoints else "none")
        body += row
    return table


def _date(mtime) -> str:
    import datetime

    try:
        return datetime.datetime.fromtimestamp(float(mtime), datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        )
    except (TypeError, ValueError, OverflowError):
        return "?"


def _site_commit(app) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(app.srcdir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()[:7] or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _summary(app) -> nodes.paragraph:
    records = [e for e in getattr(app.env, "llmbook_records", {}).values() if e.get("record")]
    total = sum(s for s in (_seconds(e) for e in records) if s is not None)
    profiles = sorted({e["record"].get("profile", "?") for e in records})
    machines = sorted({str(e["record"].get("device_name")) for e in records})
    return nodes.paragraph(
        text=(
            f"{len(records)} chapters, {total / 60:.1f} minutes of execution in all, "
            f"profile{'s' * (len(profiles) != 1)} {', '.join(profiles) or 'none'}, on "
            f"{'; '.join(machines) or 'no machine'}; this site was built from commit "
            f"{_site_commit(app)}."
        ),
        classes=["llmbook-execution-summary"],
    )


def _badge(app, docname: str) -> nodes.paragraph | None:
    entry = getattr(app.env, "llmbook_records", {}).get(docname)
    pages = sorted(getattr(app.env, "llmbook_record_pages", set()))
    if not entry or not entry.get("record") or not pages:
        return None
    record = entry["record"]
    seconds = _seconds(entry)
    n = len(record.get("checkpoints") or [])
    text = (
        f"Executed with the {record.get('profile')} profile on {record.get('device')}"
        f" ({record.get('threads')} thread{'s' * (record.get('threads') != 1)}, torch "
        f"{record.get('torch')}, seed {record.get('seed')}"
        + ("" if seconds is None else f", {seconds:.0f} s")
        + f", {n} zoo checkpoint{'s' * (n != 1)}). "
    )
    para = nodes.paragraph(classes=["llmbook-run-badge"])
    para += nodes.Text("Executed with the ")
    para += nodes.strong(text=f"{record.get('profile')} profile")
    para += nodes.Text(text.removeprefix(f"Executed with the {record.get('profile')} profile"))
    try:
        uri = app.builder.get_relative_uri(docname, pages[0]) + "#" + row_id(docname)
    except Exception:
        return para
    para += nodes.reference("", "Execution record", internal=True, refuri=uri)
    return para


def _on_doctree_resolved(app, doctree, docname) -> None:
    for node in list(doctree.findall(execution_record_table)):
        node.replace_self([_summary(app), _table(app, docname)])
    badge = _badge(app, docname)
    if badge is None:
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None or not section.children or not isinstance(section[0], nodes.title):
        return
    section.insert(1, badge)


def setup(app):
    app.add_node(execution_record_table)
    app.add_directive("execution-record", ExecutionRecordDirective)
    app.connect("doctree-read", _on_doctree_read)
    app.connect("env-purge-doc", _on_purge)
    app.connect("env-merge-info", _on_merge)
    app.connect("env-get-outdated", _on_outdated)
    app.connect("doctree-resolved", _on_doctree_resolved)
    return {
        "version": "1.0",
        "env_version": 1,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
