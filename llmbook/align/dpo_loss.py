r"""Direct preference optimisation: pure loss functions of four sequence log-probabilities.

The KL-regularised RL objective of Parts 8 and 9, $\max_\pi \mathbb E[r(x,y)] - \beta\,\mathrm{KL}(\pi\|\pi_\text{ref})$,
has the closed-form optimum $\pi^*(y|x) = \pi_\text{ref}(y|x)\,e^{r(x,y)/\beta} / Z(x)$. Solved for the
reward, $r(x,y) = \beta\log\frac{\pi^*(y|x)}{\pi_\text{ref}(y|x)} + \beta\log Z(x)$: every policy defines an
*implicit reward* $\hat r = \beta(\log\pi_\theta(y|x) - \log\pi_\text{ref}(y|x))$, and the intractable
$\beta\log Z(x)$ cancels in a difference of two answers to the same prompt. Put into the Bradley–Terry
likelihood of Part 7, $P(y_c \succ y_r) = \sigma(\hat r_c - \hat r_r)$, the reward model disappears
(Rafailov et al., 2023). With the log-ratio gap

$$\Delta = (\log\pi_\theta(y_c) - \log\pi_\text{ref}(y_c)) - (\log\pi_\theta(y_r) - \log\pi_\text{ref}(y_r)),$$

the losses of :data:`DPO_LOSSES` are

- ``"sigmoid"`` (DPO): $-\log\sigma(\beta\Delta)$, the Bradley–Terry negative log-likelihood;
- ``"cdpo"`` (conservative DPO, Mitchell 2023): the same likelihood when each label is flipped with
  probability $\varepsilon$ (``label_smoothing``), $-(1-\varepsilon)\log\sigma(\beta\Delta) - \varepsilon\log\sigma(-\beta\Delta)$,
  whose minimum sits at a finite $\beta\Delta = \log\frac{1-\varepsilon}{\varepsilon}$ instead of at infinity;
- ``"ipo"`` (Azar et al., 2023): the squared distance $(\Delta - \frac{1}{2\beta})^2$ to a fixed target
  gap, which also stops pushing once the gap is reached. With ``chosen_lengths`` and
  ``rejected_lengths`` the two log-ratios are first averaged per token (TRL's normalisation).

With ``sft_coef`` $\lambda > 0$ the loss adds $\lambda$ times the chosen answers' negative log-likelihood
per token (RPO, Pang et al., 2024), which keeps the likelihood of the chosen answers from falling
while the gap grows. The log-probabilities are sums over the answer's tokens; the reference ones carry no gradient and are
computed once, before training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DPO_LOSSES = ("sigmoid", "cdpo", "ipo")
"""The losses :func:`dpo_loss` knows (see the module docstring)."""


def _check_inputs(**tensors: torch.Tensor) -> int:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or first[0] == 0 or any(s != first for s in shapes.values()):
        raise ValueError(
            f"{', '.join(shapes)}: expected non-empty 1-D tensors of one shape, got {shapes}"
        )
    return first[0]


def _check_number(name: str, value, *, low: float, high: float = math.inf, open_low: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    value_f = float(value) if ok else math.nan
    inside = (value_f > low if open_low else value_f >= low) and value_f < high
    if not (ok and math.isfinite(value_f) and inside):
        bound = f"> {low}" if open_low else f">= {low}"
        upper = "" if high == math.inf else f" and < {high}"
        raise ValueError(f"{name}: expected a finite number {bound}{upper}, got {value!r}")
    return value_f


def dpo_loss(
    logps_chosen: torch.Tensor,
    logps_rejected: torch.Tensor,
    ref_logps_chosen: torch.Tensor,
    ref_logps_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    loss: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    sft_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    r"""The DPO loss of a batch of pairs, and what it measured (see the module docstring).

    :param logps_chosen: $\log\pi_\theta(y_c|x)$, summed over the chosen answers' tokens, ``(N,)``.
    :param logps_rejected: $\log\pi_\theta(y_r|x)$, ``(N,)``.
    :param ref_logps_chosen: $\log\pi_\text{ref}(y_c|x)$, ``(N,)`` (no gradient flows into it).
    :param ref_logps_rejected: $\log\pi_\text{ref}(y_r|x)$, ``(N,)``.
    :param beta: $\beta > 0$, the strength of the implicit KL regularisation (IPO's $\tau$).
    :param loss: one of :data:`DPO_LOSSES`.
    :param label_smoothing: $\varepsilon \in [0, 0.5)$, the assumed label-flip rate of ``"cdpo"``
        (must be 0 for the other losses).
    :param chosen_lengths: answer token counts ``(N,)`` for ``"ipo"``'s per-token averaging (with
        ``rejected_lengths``; None: sums, as in the paper).
    :param rejected_lengths: the rejected answers' token counts ``(N,)``.
    :param sft_coef: $\lambda \ge 0$, the weight of the chosen answers' negative log-likelihood per
        token, $-\sum_i \log\pi_\theta(y_{c,i}) / \sum_i |y_{c,i}|$ (needs the lengths).
    :returns: ``(loss, metrics)``: the batch mean, and detached floats ``loss``, ``accuracy`` (share of
        pairs whose implicit reward ranks the chosen answer strictly higher), ``margin`` (mean
        $\hat r_c - \hat r_r$), ``reward_chosen``, ``reward_rejected`` (mean implicit rewards
        $\beta$ times the log-ratio), ``logps_chosen``, ``logps_rejected`` (mean policy log-probs).
    :raises ValueError: naming the argument: shapes, a non-positive or non-finite ``beta``, an unknown
        ``loss``, a smoothing outside $[0, 0.5)$ or given to a loss that has none, lengths given
        alone, to a loss other than ``"ipo"`` without ``sft_coef``, or not positive; a negative or
        non-finite ``sft_coef``, or one without lengths.

    Introduced in {doc}`/book/part10/01-dpo`.
    """
    _check_inputs(
        logps_chosen=logps_chosen,
        logps_rejected=logps_rejected,
        ref_logps_chosen=ref_logps_chosen,
        ref_logps_rejected=ref_logps_rejected,
    )
    beta = _check_number("beta", beta, low=0.0, open_low=True)
    if loss not in DPO_LOSSES:
        raise ValueError(f"loss: expected one of {DPO_LOSSES}, got {loss!r}")
    eps = _check_number("label_smoothing", label_smoothing, low=0.0, high=0.5, open_low=False)
    if eps > 0 and loss != "cdpo":
        raise ValueError(f"label_smoothing: only the 'cdpo' loss smooths labels, got loss {loss!r}")
    sft_coef = _check_number("sft_coef", sft_coef, low=0.0, open_low=False)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("chosen_lengths, rejected_lengths: give both or neither")
    if sft_coef > 0 and chosen_lengths is None:
        raise ValueError(
            "sft_coef: the per-token likelihood needs chosen_lengths and rejected_lengths"
        )
    chosen_ratio = logps_chosen - ref_logps_chosen.detach()  # (N,)
    rejected_ratio = logps_rejected - ref_logps_rejected.detach()  # (N,)
    if chosen_lengths is not None:
        if loss != "ipo" and sft_coef == 0:
            raise ValueError(
                f"chosen_lengths: only the 'ipo' loss and the sft term use lengths, got {loss!r}"
            )
        _check_inputs(logps_chosen=logps_chosen, chosen_lengths=chosen_lengths)
        _check_inputs(logps_chosen=logps_chosen, rejected_lengths=rejected_lengths)
        if bool((chosen_lengths <= 0).any()) or bool((rejected_lengths <= 0).any()):
            raise ValueError(
                "chosen_lengths, rejected_lengths: every answer has at least one token"
            )
    delta = chosen_ratio - rejected_ratio  # (N,)
    if loss == "sigmoid":
        per_pair = -F.logsigmoid(beta * delta)
    elif loss == "cdpo":
        per_pair = -(1.0 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    else:
        gap = delta
        if chosen_lengths is not None and loss == "ipo":
            gap = chosen_ratio / chosen_lengths - rejected_ratio / rejected_lengths
        per_pair = (gap - 1.0 / (2.0 * beta)) ** 2
    value = per_pair.mean()
    nll = None
    if sft_coef > 0:
        nll = -logps_chosen.sum() / chosen_lengths.sum()
        value = value + sft_coef * nll
    with torch.no_grad():
        reward_c, reward_r = beta * chosen_ratio.float(), beta * rejected_ratio.float()
        metrics = {
            "loss": float(value),
            "accuracy": float((reward_c > reward_r).float().mean()),
            "margin": float((reward_c - reward_r).mean()),
            "reward_chosen": float(reward_c.mean()),
            "reward_rejected": float(reward_r.mean()),
            "logps_chosen": float(logps_chosen.float().mean()),
            "logps_rejected": float(logps_rejected.float().mean()),
        }
        if nll is not None:
            metrics["nll"] = float(nll)
    return value, metrics


def dpo_optimum_gap(beta: float, label_smoothing: float) -> float:
    r"""The log-ratio gap $\Delta$ at which the conservative DPO loss is smallest.

    Setting the derivative of $-(1-\varepsilon)\log\sigma(\beta\Delta) - \varepsilon\log\sigma(-\beta\Delta)$
    to zero gives $\sigma(\beta\Delta) = 1 - \varepsilon$, so $\Delta^* = \frac{1}{\beta}\log\frac{1-\varepsilon}{\varepsilon}$
    (infinite for plain DPO, $\varepsilon = 0$: its loss keeps pushing the gap apart).

    :param beta: $\beta > 0$.
    :param label_smoothing: $\varepsilon \in [0, 0.5)$.
    :returns: $\Delta^*$ (``inf`` when $\varepsilon = 0$).
    :raises ValueError: for values out of range.

    Introduced in {doc}`/book/part10/01-dpo`.
    """
    beta = _check_number("beta", beta, low=0.0, open_low=True)
    eps = _check_number("label_smoothing", label_smoothing, low=0.0, high=0.5, open_low=False)
    if eps == 0.0:
        return math.inf
    return math.log((1.0 - eps) / eps) / beta
