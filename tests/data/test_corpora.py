import functools
import http.server
import threading

import pytest

from llmbook.data import corpora
from llmbook.data.corpora import ChecksumError, CorpusFile, load_corpus, load_tinyshakespeare


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMBOOK_DATA_DIR", raising=False)
    return tmp_path


def _spec(monkeypatch, data: bytes, url="http://127.0.0.1:9/none.txt"):
    spec = CorpusFile(name="toy.txt", url=url, sha256=corpora.sha256_of(data))
    monkeypatch.setitem(corpora.CORPORA, "toy", spec)
    return spec


def test_mirror_is_used_and_verified(isolated, monkeypatch):
    mirror = isolated / "mirror"
    mirror.mkdir()
    (mirror / "toy.txt").write_bytes(b"to be or not to be\n")
    _spec(monkeypatch, b"to be or not to be\n")
    monkeypatch.setenv("LLMBOOK_DATA_DIR", str(mirror))
    c = load_corpus("toy", download=False)
    assert (c.origin, c.text) == ("mirror", "to be or not to be\n")
    (mirror / "toy.txt").write_bytes(b"to be or not to be?\n")
    with pytest.raises(ChecksumError, match="toy.txt"):
        load_corpus("toy", download=False)


def test_download_verifies_and_caches(isolated, monkeypatch):
    served = isolated / "www"
    served.mkdir()
    (served / "toy.txt").write_bytes(b"hello corpus\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _spec(
            monkeypatch, b"hello corpus\n", f"http://127.0.0.1:{server.server_address[1]}/toy.txt"
        )
        first = load_corpus("toy", timeout=5)
        assert first.origin == "download" and first.text == "hello corpus\n"
        assert load_corpus("toy", download=False).origin == "cache"
    finally:
        server.shutdown()


def test_wrong_download_is_not_cached(isolated, monkeypatch):
    spec = _spec(monkeypatch, b"expected")
    monkeypatch.setattr(
        corpora, "_download", lambda s, t: (_ for _ in ()).throw(ChecksumError("bad sha"))
    )
    with pytest.warns(corpora.FallbackCorpusWarning, match="bad sha"):
        c = load_corpus("toy")
    assert c.origin == "fallback"
    assert not (isolated / "cache" / "data" / spec.name).exists()


def test_offline_fallback_is_announced_by_a_warning_not_a_print(isolated, monkeypatch, capsys):
    def refuse(spec, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(corpora, "_download", refuse)
    with pytest.warns(corpora.FallbackCorpusWarning) as record:
        c = load_tinyshakespeare()
    assert c.origin == "fallback" and c.path is None
    (message,) = [str(w.message) for w in record]
    assert "OFFLINE FALLBACK" in message and "network unreachable" in message
    assert "\n" not in message and capsys.readouterr().err == ""
    assert issubclass(corpora.FallbackCorpusWarning, UserWarning)
    assert len(c.text) > 100_000  # Python's help topics: enough text to train on


def test_every_declared_file_has_a_sha256():
    for name, spec in corpora.CORPORA.items():
        assert isinstance(spec.sha256, str) and len(spec.sha256) == 64, name
        int(spec.sha256, 16)
    # The train split's checksum is the one published with the pytorch/examples copy, whose valid and
    # test files have exactly our (mirror-verified) checksums.
    assert corpora.CORPORA["wikitext-2/train"].sha256.startswith("9e9fa1ad55b1c2c9")


def test_unknown_corpus_and_split():
    with pytest.raises(KeyError, match="unknown corpus"):
        load_corpus("nope")
    with pytest.raises(ValueError, match="split"):
        corpora.load_wikitext2("training")


def test_shared_mirror_checksums_when_present():
    import os
    from pathlib import Path

    mirror = os.environ.get("LLMBOOK_DATA_DIR")
    if not mirror or not (Path(mirror) / "tinyshakespeare.txt").exists():
        pytest.skip("no corpus mirror on this machine")
    c = load_tinyshakespeare(download=False)
    assert c.origin == "mirror" and len(c.text) == 1_115_394
    v = corpora.load_wikitext2("valid", download=False)
    assert v.origin == "mirror" and "Homarus gammarus" in v.text


def test_on_real_corpus_checks_real_text_and_skips_the_fallback_out_loud(capsys):
    from types import SimpleNamespace

    from llmbook.data.corpora import Corpus, on_real_corpus

    real = Corpus("tinyshakespeare", "text", "mirror", None)
    fake = Corpus("tinyshakespeare", "text", "fallback", None)
    assert on_real_corpus(real, "a claim") is True
    assert capsys.readouterr().out == ""
    assert on_real_corpus(fake, "loss below 2") is False
    assert "loss below 2" in capsys.readouterr().out
    assert on_real_corpus(SimpleNamespace(fallback=True), "x") is False
    assert on_real_corpus(SimpleNamespace(fallback=False), "x") is True
    assert on_real_corpus("cache", "x") is True and on_real_corpus("fallback", "x") is False
    with pytest.raises(TypeError, match="source"):
        on_real_corpus(3, "x")
