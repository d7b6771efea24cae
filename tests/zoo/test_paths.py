"""The cache directory checks in llmbook.paths (the zoo's cache root)."""

import os

import pytest

from llmbook.paths import CacheDirError, cache_dir, ensure_writable_dir


def test_ensure_writable_dir_creates_and_returns(tmp_path):
    target = tmp_path / "a" / "b"
    assert ensure_writable_dir(target) == target
    assert target.is_dir()
    assert list(target.iterdir()) == []  # the probe file is removed


def test_ensure_writable_dir_refuses_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(CacheDirError, match="LLMBOOK_CACHE_DIR") as err:
        ensure_writable_dir(target)
    assert str(target) in str(err.value) and "\n" not in str(err.value)


def test_ensure_writable_dir_refuses_a_path_below_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheDirError, match="file"):
        ensure_writable_dir(tmp_path / "file" / "sub")


@pytest.mark.skipif(
    os.name == "nt" or os.geteuid() == 0, reason="needs POSIX permissions, not root"
)
def test_ensure_writable_dir_refuses_read_only(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        with pytest.raises(CacheDirError, match="not writable"):
            ensure_writable_dir(target)
    finally:
        target.chmod(0o700)


def test_cache_dir_that_is_a_file_is_a_cache_dir_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("LLMBOOK_CACHE_DIR", str(tmp_path / "file"))
    with pytest.raises(CacheDirError, match="LLMBOOK_CACHE_DIR"):
        cache_dir()


def test_ensure_writable_dir_refuses_when_the_probe_cannot_be_written(tmp_path, monkeypatch):
    # Root ignores permission bits, so simulate the read-only mount at the probe.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("llmbook.paths.tempfile.mkstemp", refuse)
    with pytest.raises(CacheDirError, match="not writable.*Permission denied"):
        ensure_writable_dir(tmp_path)
