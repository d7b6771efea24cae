r"""The chat format: special tokens for turns, rendering a conversation with its loss mask, parsing.

A conversation is rendered as one id sequence,

```text
<|bos|> <|user|> user text <|end|> <|assistant|> answer <|end|> <|user|> ...
```

and a boolean ``loss_mask`` of the same length that is True exactly on the assistant's content and
the ``<|end|>`` closing it: supervised fine-tuning teaches the model to answer *and to stop*, never to
imitate the user. Contents are encoded as ordinary text (the tokenizer's special-token contract), so
a message that contains the characters ``<|end|>`` cannot close its turn early or forge another one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from llmbook.tokenizer.base import Tokenizer
from llmbook.tokenizer.bpe import BPETokenizer
from llmbook.tokenizer.byte import ByteTokenizer

CHAT_SPECIALS = ("<|user|>", "<|assistant|>", "<|end|>")
"""The special tokens of the chat format, in the order :func:`chat_tokenizer` appends them."""

ROLES = ("user", "assistant")
"""The roles a :class:`Message` may have."""

_ROLE_TAGS = {"user": "<|user|>", "assistant": "<|assistant|>"}


def chat_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A tokenizer of the same kind with the chat specials appended after its own specials.

    Every old id keeps its meaning (same bytes, same special), and the missing :data:`CHAT_SPECIALS`
    get the next free ids, after the whole old vocabulary: the default byte tokenizer (256 bytes,
    then ``<|bos|>``, ``<|eos|>``, ``<|pad|>`` at 256-258) gains ``<|user|>`` = 259,
    ``<|assistant|>`` = 260 and ``<|end|>`` = 261. A model trained on the old tokenizer therefore
    only needs new rows at the end of its embedding (:func:`~llmbook.align.vocab.grow_vocab`).

    :param tokenizer: a :class:`~llmbook.tokenizer.ByteTokenizer` or
        :class:`~llmbook.tokenizer.BPETokenizer`.
    :returns: a new tokenizer with the chat specials, or ``tokenizer`` itself when it already has
        all of them (so calling this twice changes nothing).
    :raises TypeError: for another kind of tokenizer, whose ids this function cannot extend safely.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """
    if not isinstance(tokenizer, (ByteTokenizer, BPETokenizer)):
        raise TypeError(
            "tokenizer: chat_tokenizer supports ByteTokenizer and BPETokenizer, "
            f"got {type(tokenizer).__name__}"
        )
    missing = [s for s in CHAT_SPECIALS if s not in tokenizer.special_ids]
    if not missing:
        return tokenizer
    # Both kinds number their specials in order right after the last ordinary id, so appending to
    # the tuple gives the new ones ids above every existing id and leaves the old ids untouched.
    data = tokenizer.to_dict()
    data["specials"] = [*tokenizer.specials, *missing]
    grown = type(tokenizer).from_dict(data)
    assert all(grown.special_ids[s] == i for s, i in tokenizer.special_ids.items())
    assert min(grown.special_ids[s] for s in missing) == tokenizer.vocab_size
    return grown


@dataclass(frozen=True)
class Message:
    """One turn of a conversation.

    :param role: who speaks: ``"user"`` or ``"assistant"``.
    :param content: what they say (plain text; special-token strings in it stay text).
    :raises ValueError: for an unknown role or content that is not a string.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role: must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"content: must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True)
class ParsedCompletion:
    """What :meth:`ChatFormat.parse` read from a model's completion.

    :param text: the decoded answer: the ids before the first ``<|end|>``, special ids left out,
        invalid UTF-8 replaced by U+FFFD.
    :param finished: whether the model produced ``<|end|>`` (False: it ran out of tokens).
    :param n_tokens: how many ids the answer used, ``<|end|>`` included; everything after it is
        ignored.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    text: str
    finished: bool
    n_tokens: int


def _as_message(item, k: int) -> Message:
    if isinstance(item, Message):
        return item
    if isinstance(item, Mapping):
        keys = set(item)
        if keys != {"role", "content"}:
            extra = sorted(keys - {"role", "content"}) or sorted({"role", "content"} - keys)
            raise ValueError(
                f"conversation: message {k} must have exactly the keys 'role' and 'content' "
                f"(problem: {extra[0]!r})"
            )
        return Message(item["role"], item["content"])
    raise ValueError(
        f"conversation: message {k} must be a Message or a dict, got {type(item).__name__}"
    )


class ChatFormat:
    """Renders conversations to ids with a loss mask, and parses completions, for one tokenizer.

    :param tokenizer: a tokenizer with ``<|bos|>`` and the :data:`CHAT_SPECIALS` (see
        :func:`chat_tokenizer`).
    :raises ValueError: naming the first special the tokenizer lacks.

    Introduced in {doc}`/book/part6/01-chat-format`.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        for special in ("<|bos|>", *CHAT_SPECIALS):
            if special not in tokenizer.special_ids:
                raise ValueError(
                    f"tokenizer: has no {special!r} special token; "
                    "build it with llmbook.align.chat.chat_tokenizer(tokenizer)"
                )
        self._tokenizer = tokenizer
        self._bos = tokenizer.special_ids["<|bos|>"]
        self._tags = {role: tokenizer.special_ids[tag] for role, tag in _ROLE_TAGS.items()}
        self._end = tokenizer.special_ids["<|end|>"]

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the ids belong to."""
        return self._tokenizer

    @property
    def bos_id(self) -> int:
        """Id of ``<|bos|>``, the first id of every rendered conversation."""
        return self._bos

    @property
    def user_id(self) -> int:
        """Id of ``<|user|>``, which opens a user turn."""
        return self._tags["user"]

    @property
    def assistant_id(self) -> int:
        """Id of ``<|assistant|>``, which opens an assistant turn."""
        return self._tags["assistant"]

    @property
    def end_id(self) -> int:
        """Id of ``<|end|>``, which closes every turn (and which the model must learn to emit)."""
        return self._end

    def render(
        self,
        conversation: Sequence[Message | Mapping[str, str]],
        *,
        add_generation_prompt: bool = False,
    ) -> tuple[list[int], list[bool]]:
        """Turn a conversation into ids and the mask of the positions the SFT loss trains on.

        The ids are ``<|bos|>``, then per message its role tag, its content (encoded as ordinary
        text: special strings in it never become special ids) and ``<|end|>``. ``loss_mask[t]`` is
        True exactly when ids ``t`` is part of an assistant content or the ``<|end|>`` that closes
        an assistant turn; the BOS, the role tags and every user id are False.

        :param conversation: the messages in order, as :class:`Message` or dicts with the keys
            ``"role"`` and ``"content"``.
        :param add_generation_prompt: append ``<|assistant|>`` (mask False) after a final user
            message, so that a model sampling from the ids writes the answer.
        :returns: ``(ids, loss_mask)``, two lists of the same length.
        :raises ValueError: for a malformed message, or ``add_generation_prompt`` when the last
            message is not a user message.
        """
        if isinstance(conversation, (str, bytes, Mapping, Message)):
            raise ValueError(
                "conversation: expected a list of messages, "
                f"got a single {type(conversation).__name__}"
            )
        messages = [_as_message(m, k) for k, m in enumerate(conversation)]
        if add_generation_prompt and (not messages or messages[-1].role != "user"):
            raise ValueError("add_generation_prompt: the conversation must end with a user message")
        # One batched call, the same ids as encoding each content alone; no special is parsed.
        contents = self._tokenizer.encode_batch([m.content for m in messages], allowed_special=())
        ids, mask = [self._bos], [False]
        for message, content in zip(messages, contents):
            trained = message.role == "assistant"
            ids.append(self._tags[message.role])
            mask.append(False)
            ids.extend(content)
            ids.append(self._end)
            mask.extend([trained] * (len(content) + 1))
        if add_generation_prompt:
            ids.append(self.assistant_id)
            mask.append(False)
        return ids, mask

    def render_example(self, prompt: str, answer: str) -> tuple[list[int], list[bool]]:
        """Render a one-turn exchange: the user's prompt, then the assistant's answer.

        :param prompt: the user's text.
        :param answer: the assistant's text (the part the loss trains on, with its ``<|end|>``).
        :returns: ``(ids, loss_mask)`` as :meth:`render` gives them.
        """
        return self.render([Message("user", prompt), Message("assistant", answer)])

    def prompt_ids(self, prompt: str) -> list[int]:
        """The ids generation starts from: BOS, the user's turn, then ``<|assistant|>``.

        :param prompt: the user's text.
        :returns: the ids; ``render_example(prompt, answer)`` starts with exactly these.
        """
        return self.render([Message("user", prompt)], add_generation_prompt=True)[0]

    def parse(self, completion_ids: Sequence[int] | torch.Tensor) -> ParsedCompletion:
        """Read the assistant's answer from the ids a model generated after :meth:`prompt_ids`.

        The answer is everything before the first ``<|end|>``. It is decoded with every special id
        left out (an ``<|eos|>``, a pad, a stray role tag) and invalid UTF-8 replaced, so any id
        sequence within the vocabulary parses without an exception: a model's output is data, not
        trusted input.

        :param completion_ids: the generated ids (a list or a 1-D tensor), without the prompt.
        :returns: a :class:`ParsedCompletion`.
        :raises ValueError: for an id outside the vocabulary.
        """
        if isinstance(completion_ids, torch.Tensor):
            completion_ids = completion_ids.reshape(-1).tolist()
        ids = [int(i) for i in completion_ids]
        try:
            stop = ids.index(self._end)
        except ValueError:
            answer, finished, n_tokens = ids, False, len(ids)
        else:
            answer, finished, n_tokens = ids[:stop], True, stop + 1
        text = self._tokenizer.decode(answer, errors="replace", specials="skip")
        return ParsedCompletion(text=text, finished=finished, n_tokens=n_tokens)

    def __repr__(self) -> str:
        return (
            f"ChatFormat(user_id={self.user_id}, assistant_id={self.assistant_id}, "
            f"end_id={self.end_id}, vocab_size={self._tokenizer.vocab_size})"
        )
