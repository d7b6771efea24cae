r"""KL controllers: how the coefficient $\beta$ of the KL penalty is chosen as PPO runs.

A fixed $\beta$ trades reward against drift from the reference once, before the run; how much KL a
given $\beta$ buys depends on the reward's scale and on how far the policy can move, so it is hard
to pick. The *adaptive* controller of Ziegler et al. (2019) aims at a target KL instead. After each
batch with measured KL $\mathrm{KL}_\text{obs}$ (per sequence) it updates

$$ e = \mathrm{clip}\!\left(\frac{\mathrm{KL}_\text{obs}}{\mathrm{KL}_\text{target}} - 1,\,
   -0.2,\, 0.2\right), \qquad \beta \leftarrow \beta\,\Big(1 + e\,\frac{n}{H}\Big), $$

a proportional controller on $\log\beta$ with horizon $H$ (in sequences): $n$ sequences over target
raise $\beta$ by at most $0.2\,n/H$ of itself, and the clip keeps one noisy batch from swinging it.
"""

from __future__ import annotations

import math


def _positive(name: str, value) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return value


class FixedKLController:
    """A constant KL coefficient.

    :param beta: $\\beta \\ge 0$, finite.
    :raises ValueError: for a negative or non-finite ``beta``.

    Introduced in {doc}`/book/part8/04-the-loop`.
    """

    def __init__(self, beta: float) -> None:
        beta = float(beta)
        if not (beta >= 0 and math.isfinite(beta)):
            raise ValueError(f"beta: must be a finite number >= 0, got {beta!r}")
        self.beta = beta

    def update(self, kl: float, n_sequences: int) -> float:
        """Leave $\\beta$ as it is.

        :param kl: the measured KL per sequence (ignored).
        :param n_sequences: sequences in the batch (ignored).
        :returns: $\\beta$.
        """
        return self.beta

    def state_dict(self) -> dict:
        """The state to save with a checkpoint.

        :returns: ``{"beta": beta}``.
        """
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved state.

        :param state: what :meth:`state_dict` returned.
        """
        self.beta = float(state["beta"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al.'s proportional controller that steers the KL per sequence toward a target.

    :param beta: the initial $\\beta > 0$.
    :param target: the target KL per sequence (nats), $> 0$.
    :param horizon: $H$, the number of sequences over which $\\beta$ may change by about 20 %.
    :raises ValueError: for a value that is not a positive finite number.

    Introduced in {doc}`/book/part8/04-the-loop`.
    """

    def __init__(self, beta: float, *, target: float, horizon: float = 10_000) -> None:
        super().__init__(_positive("beta", beta))
        self.target = _positive("target", target)
        self.horizon = _positive("horizon", horizon)

    def update(self, kl: float, n_sequences: int) -> float:
        """One proportional step toward the target.

        :param kl: the measured KL per sequence of the last batch.
        :param n_sequences: sequences in that batch.
        :returns: the new $\\beta$.
        :raises ValueError: for a KL that is not finite.
        """
        kl = float(kl)
        if not math.isfinite(kl):
            raise ValueError(f"kl: must be finite, got {kl!r}")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_sequences / self.horizon
        return self.beta
