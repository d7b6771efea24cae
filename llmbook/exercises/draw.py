"""Seeded random draws for the exercise checker's random cases.

One :class:`Draw` holds a ``torch.Generator`` and a ``random.Random`` seeded alike, so a catalog's
random case is a pure function of the seed and never touches the global random state.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch


class Draw:
    """Random numbers, shapes and tensors from one seed.

    :param seed: the seed of both generators.

    Introduced in {doc}`/book/part0/02-preferences`.
    """

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        """A uniform integer in ``[low, high]``, both ends included.

        :param low: the smallest value.
        :param high: the largest value.
        :returns: the integer.
        """
        return self.rng.randint(low, high)

    def choice(self, options: Sequence):
        """One of ``options``, uniformly.

        :param options: a non-empty sequence.
        :returns: the chosen item.
        """
        return self.rng.choice(list(options))

    def coin(self, p: float = 0.5) -> bool:
        """True with probability ``p``.

        :param p: the probability of True.
        :returns: a bool.
        """
        return self.rng.random() < p

    def randn(
        self, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0
    ) -> torch.Tensor:
        """Standard normal values times ``scale``, drawn in float64 and then cast.

        :param shape: the tensor's shape.
        :param dtype: its dtype.
        :param scale: the standard deviation.
        :returns: the tensor.
        """
        return (scale * torch.randn(shape, generator=self.gen, dtype=torch.float64)).to(dtype)

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform values in ``[0, 1)``.

        :param shape: the tensor's shape.
        :param dtype: its dtype.
        :returns: the tensor.
        """
        return torch.rand(shape, generator=self.gen, dtype=torch.float64).to(dtype)

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Uniform integers in ``[low, high)`` as a long tensor.

        :param low: the smallest value.
        :param high: one past the largest value.
        :param shape: the tensor's shape.
        :returns: the tensor.
        """
        return torch.randint(low, high, shape, generator=self.gen)

    def lengths_mask(self, lengths: Sequence[int], width: int) -> torch.Tensor:
        """A bool ``(len(lengths), width)`` mask, True on the first ``lengths[b]`` columns of row b.

        :param lengths: the real length of each row.
        :param width: the number of columns.
        :returns: the mask.
        """
        return torch.arange(width)[None, :] < torch.tensor(list(lengths))[:, None]
