"""The checkpoint store: publish, then fetch over HTTP from a local server, verified by sha256."""

import functools
import http.server
import json
import tarfile
import threading
import warnings

import pytest
import torch

from llmbook.cli import main
from llmbook.runinfo import start_run
from llmbook.zoo.checkpoint import CheckpointError
from llmbook.zoo.recipes import resolve
from llmbook.zoo.registry import checkpoint_dir
from llmbook.zoo.store import (
    StoreWarning,
    archive_name,
    fetch,
    is_published,
    load_or_train,
    pack,
    publish,
    store_url,
)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on a free local port serving ``tmp_path/store``; yields ``(url, folder)``."""
    folder = tmp_path / "store"
    folder.mkdir()
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/zoo", folder
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def published(toy_zoo, server, tmp_path, monkeypatch):
    """The toy recipe trained in one cache, published to the server, and a second, empty cache."""
    url, folder = server
    trained = load_or_train("toy", "cpu", progress=False)
    assert trained.trained_now
    done, missing = publish(["toy"], "cpu", folder / "zoo")
    assert missing == [] and len(done) == 1
    other = tmp_path / "reader-cache"
    monkeypatch.setenv("LLMBOOK_CACHE_DIR", str(other))
    return url, folder / "zoo", trained, other


def test_a_published_checkpoint_is_fetched_not_trained(published):
    url, _, trained, other = published
    run = start_run(seed=3)
    got = load_or_train("toy", "cpu", progress=False, url=url)
    assert not got.trained_now
    assert got.path == checkpoint_dir(resolve("toy", "cpu"), other) and got.path.is_dir()
    for a, b in zip(trained.model.parameters(), got.model.parameters(), strict=True):
        assert torch.equal(a, b)
    (entry,) = run.record()["checkpoints"]
    assert entry["recipe"] == "toy" and entry["source"] == "fetched"
    assert entry["key"] == trained.recipe.key and entry["metrics"] == trained.meta["metrics"]
    # A second call finds it in the cache; the record lists the model once, as fetched.
    again = load_or_train("toy", "cpu", progress=False, url=url)
    assert not again.trained_now and run.record()["checkpoints"] == [entry]


def test_the_store_url_comes_from_the_environment(published, monkeypatch):
    url, *_ = published
    monkeypatch.setenv("LLMBOOK_ZOO_URL", url + "/")
    assert store_url() == url
    assert is_published(resolve("toy", "cpu"))
    assert not is_published(resolve("toy", "gpu"))
    assert not load_or_train("toy", "cpu", progress=False).trained_now


def test_no_published_checkpoint_means_training(toy_zoo, server):
    url, _ = server
    assert fetch(resolve("toy", "cpu"), url=url) is None
    assert load_or_train("toy", "cpu", progress=False, url=url).trained_now


def test_an_unreachable_store_warns_and_trains(toy_zoo):
    with pytest.warns(StoreWarning, match="unreachable"):
        got = load_or_train("toy", "cpu", progress=False, url="http://127.0.0.1:9/zoo")
    assert got.trained_now


def test_a_corrupt_download_is_refused_and_nothing_is_installed(published):
    url, folder, _, other = published
    archive = folder / archive_name(resolve("toy", "cpu"))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the published"):
        load_or_train("toy", "cpu", progress=False, url=url)
    zoo = other / "zoo"
    assert not checkpoint_dir(resolve("toy", "cpu"), other).exists()
    assert [p.name for p in zoo.iterdir() if "download" in p.name] == []


def _republish(folder, name, members):
    """Replace the archive ``name`` with ``members`` (name -> bytes) and a matching sha256 file."""
    import hashlib
    import io

    archive = folder / name
    with tarfile.open(archive, "w") as tar:
        for member, payload in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    (folder / (name + ".sha256")).write_text(f"{sha}  {name}\n")


def _files_as(checkpoint, recipe):
    """The files of a checkpoint folder as archive members under ``recipe``'s folder name."""
    top = checkpoint_dir(recipe).name
    return {f"{top}/{p.name}": p.read_bytes() for p in sorted(checkpoint.iterdir())}


def test_an_archive_with_a_path_outside_its_folder_is_refused(published):
    url, folder, _, other = published
    name = archive_name(resolve("toy", "cpu"))
    _republish(folder, name, {"../../escape.txt": b"x"})
    with pytest.raises(CheckpointError, match="unexpected member"):
        fetch(resolve("toy", "cpu"), url=url)
    assert not (other.parent / "escape.txt").exists()


def test_a_checkpoint_of_another_key_under_this_name_is_refused(published):
    url, folder, trained, _ = published
    gpu = resolve("toy", "gpu")
    # The cpu checkpoint's files, renamed as the gpu checkpoint: right sha256, wrong key inside.
    _republish(folder, archive_name(gpu), _files_as(trained.path, gpu))
    with pytest.raises(CheckpointError, match="key"):
        fetch(gpu, url=url)


def test_a_tampered_weights_file_with_a_matching_archive_sha_is_refused(published):
    url, folder, trained, _ = published
    recipe = resolve("toy", "cpu")
    top = checkpoint_dir(recipe).name
    members = _files_as(trained.path, recipe)
    weights = bytearray(members[f"{top}/model.safetensors"])
    weights[-1] ^= 0x01
    members[f"{top}/model.safetensors"] = bytes(weights)
    _republish(folder, archive_name(recipe), members)
    with pytest.raises(CheckpointError, match="sha256 in its checkpoint.json"):
        fetch(recipe, url=url)


def test_an_archive_without_its_weights_is_refused(published):
    url, folder, trained, _ = published
    recipe = resolve("toy", "cpu")
    top = checkpoint_dir(recipe).name
    members = {f"{top}/checkpoint.json": (trained.path / "checkpoint.json").read_bytes()}
    _republish(folder, archive_name(recipe), members)
    with pytest.raises(CheckpointError, match="model.safetensors does not match"):
        fetch(recipe, url=url)


def test_packing_is_deterministic(published, tmp_path):
    _, folder, trained, _ = published
    first, sha1 = pack(trained.path, tmp_path / "a")
    second, sha2 = pack(trained.path, tmp_path / "b")
    assert sha1 == sha2 and first.read_bytes() == second.read_bytes()
    assert (folder / first.name).read_bytes() == first.read_bytes()
    assert first.with_name(first.name + ".sha256").read_text() == f"{sha1}  {first.name}\n"


def test_store_url_refuses_other_schemes(monkeypatch):
    monkeypatch.setenv("LLMBOOK_ZOO_URL", "ftp://example.org/zoo")
    with pytest.raises(ValueError, match="LLMBOOK_ZOO_URL"):
        store_url()
    monkeypatch.setenv("LLMBOOK_ZOO_URL", "  ")
    assert store_url() is None


def test_file_urls_work_too(published):
    _, folder, _, _ = published
    assert fetch(resolve("toy", "cpu"), url=folder.as_uri()) is not None
    assert fetch(resolve("toy", "gpu"), url=folder.as_uri()) is None


def _json_line(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_the_cli_publishes_and_fetches(toy_zoo, server, tmp_path, monkeypatch, capsys):
    url, folder = server
    assert (
        main(
            ["zoo", "publish", "--recipes", "toy", "--profile", "cpu", "--out", str(folder / "zoo")]
        )
        == 1
    )
    assert _json_line(capsys)["missing"] == ["toy"]  # nothing trained yet
    load_or_train("toy", "cpu", progress=False)
    assert (
        main(
            ["zoo", "publish", "--recipes", "toy", "--profile", "cpu", "--out", str(folder / "zoo")]
        )
        == 0
    )
    (entry,) = _json_line(capsys)["published"]
    assert entry["recipe"] == "toy" and len(entry["sha256"]) == 64
    monkeypatch.setenv("LLMBOOK_CACHE_DIR", str(tmp_path / "fresh"))
    assert (
        main(["zoo", "fetch", "--check", "--recipes", "toy", "--profile", "cpu", "--url", url]) == 0
    )
    summary = _json_line(capsys)
    assert summary["complete"] and summary["published"] == ["toy"]
    assert not checkpoint_dir(resolve("toy", "cpu")).exists()  # --check downloads nothing
    assert main(["zoo", "fetch", "--recipes", "toy", "--profile", "cpu", "--url", url]) == 0
    summary = _json_line(capsys)
    assert summary["complete"] and summary["fetched"] == ["toy"] and summary["missing"] == []
    assert main(["zoo", "fetch", "--recipes", "toy", "--profile", "gpu", "--url", url]) == 0
    summary = _json_line(capsys)
    assert not summary["complete"] and summary["missing"] == ["toy"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["zoo", "fetch", "--recipes", "toy", "--profile", "cpu", "--url", url]) == 0
    assert _json_line(capsys)["cached"] == ["toy"]
    assert main(["zoo", "fetch", "--recipes", "toy"]) == 2  # no store set
    # An unreachable store is an error for --check (the book workflow then builds the cpu profile).
    assert (
        main(
            [
                "zoo",
                "fetch",
                "--check",
                "--recipes",
                "toy",
                "--profile",
                "gpu",
                "--url",
                "http://127.0.0.1:9/z",
            ]
        )
        == 1
    )
    assert "cannot be reached" in _json_line(capsys)["error"]
