"""What every alignment run's history shares: saving to a JSON-ready dict and reading it back."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

_H = TypeVar("_H", bound="HistoryRecord")


class HistoryRecord:
    """A mixin for the dataclasses that record a run (SFT, reward model, PPO, GRPO).

    Checkpoints and the zoo's metadata store a history as the dict :meth:`to_dict` returns;
    :meth:`from_dict` rebuilds it when a run resumes or a chapter reads a stored run.

    Introduced in {doc}`/book/part6/04-packing`.
    """

    def to_dict(self) -> dict[str, Any]:
        """The history as a JSON-serialisable dict.

        :returns: field name to value.
        """
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_H], data: dict[str, Any]) -> _H:
        """Rebuild a history saved with :meth:`to_dict`.

        :param data: what :meth:`to_dict` returned (every field present).
        :returns: the history.
        :raises KeyError: naming a field the dict lacks.
        """
        return cls(**{f.name: data[f.name] for f in fields(cls)})  # type: ignore[arg-type]
