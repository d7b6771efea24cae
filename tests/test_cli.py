import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import llmbook.train
import llmbook.zoo
from llmbook.cli import main
from llmbook.tokenizer import BPETokenizer, HFTokenizer
from llmbook.train import EvalResult
from llmbook.zoo import CheckpointError, recipes
from tests.conftest import TOY_TEXT


def _strict(text):
    # The standard library's json accepts NaN; a script's parser may not.
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return _strict(out[-1])


def run(argv, capsys):
    """Run the command line; returns (status, last stdout line as JSON, stderr)."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return status, _strict(lines[-1]) if lines else None, captured.err


def assert_one_line_error(status, summary, err, *, expected_status, names, kind=None):
    assert status == expected_status
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("llmbook: error:")]
    assert len(errors) == 1, err
    assert names in errors[0]
    assert set(summary) == {"error", "type"} and names in summary["error"]
    if kind is not None:
        assert summary["type"] == kind


def test_train_sample_eval_end_with_json(toy_zoo, capsys):
    assert main(["train", "--recipe", "toy", "--profile", "cpu", "--no-progress"]) == 0
    summary = last_json(capsys)
    assert summary["command"] == "train" and summary["trained_now"]
    for key in ("val_loss", "train_seconds", "tokens_per_second"):
        assert summary[key] > 0
    assert summary["corpus_origin"] == "mirror" and summary["fallback"] is False
    argv = ["sample", "--recipe", "toy", "--profile", "cpu", "--prompt", "First"]
    argv += ["--max-new-tokens", "5", "--num-samples", "2", "--seed", str(2**64 - 1)]
    assert main(argv) == 0
    sample = last_json(capsys)
    assert len(sample["samples"]) == 2 and sample["seed"] == 2**64 - 1
    assert sample["corpus_origin"] == "mirror" and sample["fallback"] is False
    assert main(["eval", "--recipe", "toy", "--profile", "cpu"]) == 0
    ev = last_json(capsys)
    assert ev["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-6)
    # Byte tokenizer: a token is a byte, so bits per byte is the loss in bits.
    assert ev["bits_per_byte"] == pytest.approx(ev["val_loss"] / math.log(2), rel=1e-9)
    assert ev["n_bytes"] == len(TOY_TEXT) - int(0.9 * len(TOY_TEXT))
    assert ev["corpus_origin"] == "mirror" and ev["train_corpus_origin"] == "mirror"
    assert ev["fallback"] is False


def _bpe():
    return BPETokenizer.train(TOY_TEXT.decode(), 300)


def _hf():
    return HFTokenizer.train(TOY_TEXT.decode(), 300)


@pytest.mark.parametrize("make_tokenizer", [_bpe, _hf], ids=["bpe", "hf-bpe"])
def test_eval_counts_bytes_with_any_tokenizer(make_tokenizer, toy_zoo, capsys, monkeypatch):
    tok = make_tokenizer()
    base = recipes.RECIPES["toy"]
    recipe = dataclasses.replace(
        base,
        name="toy-bpe",
        tokenizer=tok.to_dict(),
        model={**base.model, "vocab_size": tok.vocab_size},
    )
    monkeypatch.setitem(recipes.RECIPES, "toy-bpe", recipe)
    assert main(["eval", "--recipe", "toy-bpe", "--profile", "cpu"]) == 0
    ev = last_json(capsys)
    # The split falls on a token boundary and decoding is lossless: train bytes + val bytes = the text.
    ids = tok.encode(TOY_TEXT.decode())
    n_train = int(0.9 * len(ids))
    assert ev["n_bytes"] + len(tok.decode_bytes(ids[:n_train])) == len(TOY_TEXT)
    assert ev["n_bytes"] > ev["n_tokens"]  # merges: tokens span several bytes
    tokens_per_byte = (len(ids) - n_train) / ev["n_bytes"]
    expected = ev["val_loss"] * tokens_per_byte / math.log(2)
    assert ev["bits_per_byte"] == pytest.approx(expected, rel=1e-9)


def test_non_finite_numbers_are_written_as_null(toy_zoo, capsys, monkeypatch):
    def nan_result(*args, **kwargs):
        return EvalResult(loss=math.nan, perplexity=math.inf, bits_per_byte=math.nan, n_tokens=3)

    monkeypatch.setattr(llmbook.train, "evaluate", nan_result)
    assert main(["eval", "--recipe", "toy", "--profile", "cpu"]) == 0
    ev = last_json(capsys)  # strict: bare NaN or Infinity would raise
    assert ev["val_loss"] is None and ev["perplexity"] is None and ev["bits_per_byte"] is None
    assert ev["n_tokens"] == 3


def test_unknown_recipe_is_a_clear_error(capsys):
    status, summary, err = run(["train", "--recipe", "nope", "--profile", "cpu"], capsys)
    assert_one_line_error(
        status, summary, err, expected_status=2, names="unknown recipe 'nope'", kind="UsageError"
    )


def test_empty_prompt_for_a_model_without_bos_is_a_usage_error(toy_zoo, capsys):
    argv = ["sample", "--recipe", "toy", "--profile", "cpu", "--prompt", ""]
    status, summary, err = run(argv, capsys)
    assert_one_line_error(status, summary, err, expected_status=2, names="--prompt")


def test_unknown_corpus_is_a_usage_error(toy_zoo, capsys):
    status, summary, err = run(["eval", "--recipe", "toy", "--corpus", "nope"], capsys)
    assert_one_line_error(status, summary, err, expected_status=2, names="--corpus")


@pytest.mark.parametrize(
    "argv, names",
    [
        (["sample", "--recipe", "x", "--top-p", "1.5"], "--top-p"),
        (["sample", "--recipe", "x", "--top-p", "nan"], "--top-p"),
        (["sample", "--recipe", "x", "--temperature", "-1"], "--temperature"),
        (["sample", "--recipe", "x", "--temperature", "nan"], "--temperature"),
        (["sample", "--recipe", "x", "--temperature", "inf"], "--temperature"),
        (["sample", "--recipe", "x", "--temperature", "warm"], "--temperature"),
        (["sample", "--recipe", "x", "--seed", str(2**64)], "--seed"),
        (["sample", "--recipe", "x", "--seed", str(10**30)], "--seed"),
        (["sample", "--recipe", "x", "--seed", "-1"], "--seed"),
        (["sample", "--recipe", "x", "--prompt", "caf\udce9"], "--prompt"),
        (["sample", "--recipe", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["eval", "--recipe", "x", "--device", "bogus"], "--device"),
        (["eval", "--recipe", "x", "--device", "cuda:99"], "--device"),
        (["train"], "--recipe"),
        (["train", "--recipe", "x", "--profile", "tpu"], "--profile"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_a_json_error(argv, names, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    summary = _strict(captured.out.strip().splitlines()[-1])
    assert_one_line_error(
        exc.value.code, summary, captured.err, expected_status=2, names=names, kind="UsageError"
    )


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_an_absent_device_is_refused_naming_what_is_available(device, capsys):
    from llmbook.device import available_devices

    if any(d.startswith(device) for d in available_devices()):
        pytest.skip(f"{device} is present here")
    status, summary, err = run(["train", "--recipe", "x", "--device", device], capsys)
    assert_one_line_error(status, summary, err, expected_status=2, names="--device")
    assert "available here: cpu" in summary["error"]


def test_missing_data_mirror_is_one_line(toy_zoo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLMBOOK_DATA_DIR", str(tmp_path / "no-such-dir"))
    status, summary, err = run(["train", "--recipe", "toy", "--profile", "cpu"], capsys)
    assert_one_line_error(status, summary, err, expected_status=1, names="LLMBOOK_DATA_DIR")


def test_bad_profile_variable_is_one_line(toy_zoo, capsys, monkeypatch):
    monkeypatch.setenv("LLMBOOK_PROFILE", "tpu")
    status, summary, err = run(["eval", "--recipe", "toy"], capsys)
    assert_one_line_error(status, summary, err, expected_status=1, names="LLMBOOK_PROFILE")


def _never_train(*args, **kwargs):
    raise AssertionError("trained although the cache cannot hold the result")


@pytest.mark.parametrize("shape", ["root is a file", "zoo is a file", "read-only"])
def test_unusable_cache_is_refused_before_training(shape, toy_zoo, capsys, monkeypatch):
    cache = toy_zoo
    if shape == "root is a file":
        cache.write_text("not a directory")
    elif shape == "zoo is a file":
        cache.mkdir()
        (cache / "zoo").write_text("not a directory")
    else:
        (cache / "zoo").mkdir(parents=True)
        (cache / "zoo").chmod(0o500)
        if os.geteuid() == 0:  # root writes anyway: make the write fail as it does for a user

            def denied(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr("llmbook.paths.tempfile.mkstemp", denied)
    monkeypatch.setattr("llmbook.zoo.registry.train", _never_train)
    status, summary, err = run(["train", "--recipe", "toy", "--profile", "cpu"], capsys)
    assert_one_line_error(
        status, summary, err, expected_status=1, names="LLMBOOK_CACHE_DIR", kind="CacheDirError"
    )
    assert str(cache) in summary["error"]


def test_checkpoint_error_is_one_line(toy_zoo, capsys, monkeypatch):
    def corrupt(*args, **kwargs):
        raise CheckpointError("/x/checkpoint.json: unknown checkpoint format")

    monkeypatch.setattr(llmbook.zoo, "load_or_train", corrupt)
    status, summary, err = run(["sample", "--recipe", "toy", "--profile", "cpu"], capsys)
    assert_one_line_error(
        status, summary, err, expected_status=1, names="checkpoint.json", kind="CheckpointError"
    )


def test_checkpoint_json_that_is_a_list_is_moved_aside_and_retrained(toy_zoo, capsys):
    assert main(["train", "--recipe", "toy", "--profile", "cpu", "--no-progress"]) == 0
    path = last_json(capsys)["checkpoint"]
    with open(os.path.join(path, "checkpoint.json"), "w") as f:
        json.dump([1, 2, 3], f)
    status, summary, err = run(["eval", "--recipe", "toy", "--profile", "cpu"], capsys)
    assert "Traceback" not in err
    assert status == 0 and summary["command"] == "eval"
    assert "checkpoint.json" in err


@pytest.mark.parametrize("error", [KeyError("boom"), ValueError("boom")])
def test_internal_errors_are_not_disguised_as_usage_errors(error, toy_zoo, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(llmbook.zoo, "load_or_train", broken)
    status, summary, err = run(["sample", "--recipe", "toy", "--profile", "cpu"], capsys)
    assert status == 1
    assert "Traceback" in err and "boom" in err
    assert summary == {
        "error": f"internal error: {type(error).__name__}: {error}",
        "type": type(error).__name__,
    }


def test_undecodable_argv_bytes_from_a_real_shell(tmp_path):
    # Python turns undecodable argv bytes into lone surrogates; the prompt must be refused by name.
    env = {**os.environ, "PYTHONUTF8": "1", "LLMBOOK_CACHE_DIR": str(tmp_path)}
    argv = [os.fsencode(sys.executable), b"-m", b"llmbook", b"sample", b"--recipe", b"x"]
    proc = subprocess.run(argv + [b"--prompt", b"caf\xe9"], capture_output=True, env=env)
    assert proc.returncode == 2
    assert b"Traceback" not in proc.stderr and b"--prompt" in proc.stderr
    summary = _strict(proc.stdout.decode().strip().splitlines()[-1])
    assert summary["type"] == "UsageError" and "--prompt" in summary["error"]


def test_zoo_key_and_list(capsys):
    assert main(["zoo", "key", "--profile", "gpu"]) == 0
    assert len(last_json(capsys)["key"]) == 16
    assert main(["zoo", "list", "--profile", "cpu"]) == 0
    assert any(r["recipe"] == "shakespeare-byte" for r in last_json(capsys)["recipes"])


def test_device_argument_reaches_the_zoo_as_a_device(toy_zoo, capsys, monkeypatch):
    seen = {}
    real = llmbook.zoo.load_or_train

    def spy(*args, **kwargs):
        seen["device"] = kwargs.get("device")
        return real(*args, **kwargs)

    monkeypatch.setattr(llmbook.zoo, "load_or_train", spy)
    argv = ["train", "--recipe", "toy", "--profile", "cpu", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    assert seen["device"] == torch.device("cpu")


def test_a_model_trained_on_the_fallback_corpus_says_so(toy_zoo, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    monkeypatch.setenv("LLMBOOK_DATA_DIR", str(empty))  # no toy.txt, and its URL refuses at once
    status, summary, err = run(
        ["train", "--recipe", "toy", "--profile", "cpu", "--no-progress"], capsys
    )
    assert status == 0, err
    assert summary["corpus_origin"] == "fallback" and summary["fallback"] is True
    assert "llmbook: warning:" in err and "FALLBACK" in err
