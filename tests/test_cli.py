import json

import pytest

from llmbook.cli import main


def last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_train_sample_eval_end_with_json(toy_zoo, capsys):
    assert main(["train", "--recipe", "toy", "--profile", "cpu", "--no-progress"]) == 0
    summary = last_json(capsys)
    assert summary["command"] == "train" and summary["trained_now"]
    for key in ("val_loss", "train_seconds", "tokens_per_second"):
        assert summary[key] > 0
    assert (
        main(
            [
                "sample",
                "--recipe",
                "toy",
                "--profile",
                "cpu",
                "--prompt",
                "First",
                "--max-new-tokens",
                "5",
                "--num-samples",
                "2",
            ]
        )
        == 0
    )
    sample = last_json(capsys)
    assert len(sample["samples"]) == 2
    assert main(["eval", "--recipe", "toy", "--profile", "cpu"]) == 0
    ev = last_json(capsys)
    assert ev["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-6)
    assert ev["bits_per_byte"] > 0


def test_unknown_recipe_is_a_clear_error(capsys):
    assert main(["train", "--recipe", "nope", "--profile", "cpu"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--recipe", "x", "--top-p", "1.5"],
        ["sample", "--recipe", "x", "--temperature", "-1"],
        ["train"],
        ["train", "--recipe", "x", "--profile", "tpu"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_zoo_key_and_list(capsys):
    assert main(["zoo", "key", "--profile", "gpu"]) == 0
    assert len(last_json(capsys)["key"]) == 16
    assert main(["zoo", "list", "--profile", "cpu"]) == 0
    assert any(r["recipe"] == "shakespeare-byte" for r in last_json(capsys)["recipes"])
