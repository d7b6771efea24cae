r"""Growing a trained model's vocabulary for new special tokens, and measuring what the new rows do.

The chat format adds tokens the base model has never seen. Their embedding rows (and LM-head rows,
when the head is untied) must be invented; the old rows are kept bit for bit, so on inputs made of
old tokens the old logits do not change at all. What remains is the question of the new rows'
initial values, answered in :func:`grow_vocab`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

INITS = ("mean", "mean_noise", "normal")
"""The initialisations :func:`grow_vocab` offers for the new rows."""


def _grown_rows(
    old: torch.Tensor,
    n_new: int,
    init: str,
    *,
    std: float,
    noise_scale: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``n_new`` rows to append to ``old`` (V, ...), in its dtype and on its device."""
    shape = (n_new, *old.shape[1:])
    if init == "normal":
        rows = torch.randn(shape, generator=generator, dtype=torch.float32)
        return (rows * std).to(device=old.device, dtype=old.dtype)
    # The mean in float64: a half-precision sum over tens of thousands of rows loses digits.
    wide = old.detach().double()
    mean = wide.mean(dim=0, keepdim=True).expand(shape)
    if init == "mean_noise":
        spread = wide.std(dim=0, correction=0) if old.size(0) > 1 else torch.zeros_like(mean[0])
        noise = torch.randn(shape, generator=generator, dtype=torch.float64)
        mean = mean + noise_scale * spread * noise.to(spread.device)
    return mean.to(dtype=old.dtype).clone()


def _grow_parameter(
    param: nn.Parameter,
    new_size: int,
    init: str,
    *,
    std: float,
    noise_scale: float,
    generator: torch.Generator | None,
) -> nn.Parameter:
    """A new parameter: ``param``'s rows unchanged, then the new ones."""
    rows = _grown_rows(
        param.data,
        new_size - param.size(0),
        init,
        std=std,
        noise_scale=noise_scale,
        generator=generator,
    )
    data = torch.cat([param.data, rows], dim=0)
    return nn.Parameter(data, requires_grad=param.requires_grad)


def grow_vocab(
    model: nn.Module,
    new_vocab_size: int,
    *,
    init: str = "mean",
    generator: torch.Generator | None = None,
    std: float | None = None,
    noise_scale: float = 0.1,
) -> nn.Module:
    r"""Give ``model`` (a :class:`~llmbook.model.GPT`) ``new_vocab_size`` ids, in place.

    The token embedding ``tok_emb`` and the LM head ``lm_head`` get new rows at the end; the old
    rows are copied bit for bit, so every old token keeps its embedding and, on inputs of old tokens,
    its logit. A tied model stays tied (one matrix, grown once). ``model.config.vocab_size`` is
    updated (through ``dataclasses.replace``, which re-validates the config). The parameters
    are new tensors: build the optimizer after growing.

    **Why the mean.** At a position with final hidden state $h$ the old logits are
    $z_i = w_i^\top h$, $i = 1..V$. A new head row $\bar w = \frac1V\sum_i w_i$ gives each of the
    $k$ new tokens the logit $\bar z = \bar w^\top h = \frac1V\sum_i z_i$: the *mean* of the old
    logits, whatever $h$ is. Since $\exp$ is convex, Jensen's inequality gives

    $$ e^{\bar z} \le \frac1V \sum_{i=1}^V e^{z_i} = \frac SV, \qquad S = \sum_{i=1}^V e^{z_i}, $$

    so each new token has at most the *average* unnormalised mass of an old one, and the
    probability of all new tokens together is

    $$ p_\text{new} = \frac{k e^{\bar z}}{S + k e^{\bar z}} \le \frac{k S/V}{S + k S/V}
       = \frac{k}{V + k}. $$

    Every old probability is rescaled by the same factor $S / (S + k e^{\bar z}) \ge 1/(1 + k/V)$:
    the distribution over old tokens keeps its shape exactly and shrinks by at most $1 + k/V$
    (three chat tokens on a vocabulary of 259 take at most 3/262, about 1.1 %, of the mass). A random row
    $w \sim \mathcal N(0, \sigma^2 I)$ has no such bound: its logit $w^\top h$ has standard deviation
    $\sigma\lVert h\rVert$ and, when that exceeds the spread of the old logits, a token the model has
    never seen can take most of the mass at the first step of fine-tuning (Hewitt, 2021,
    "Initializing new word embeddings for pretrained language models"). The same choice for the
    input rows puts a new token's embedding at the centre of the old ones, where the network's
    layers have seen inputs before.

    :param model: a model with ``tok_emb`` (:class:`torch.nn.Embedding`), ``lm_head``
        (:class:`torch.nn.Linear`) and ``config`` (with ``vocab_size`` and ``tie_weights``).
    :param new_vocab_size: the number of ids after growing; equal to the old size: nothing changes.
    :param init: the new rows: ``"mean"`` (the mean of the old rows, for the embedding and for an
        untied head separately), ``"mean_noise"`` (that mean plus Gaussian noise of
        ``noise_scale`` times the old rows' per-coordinate standard deviation, so new tokens are
        distinguishable), or ``"normal"`` ($\mathcal N(0, \text{std}^2)$, the naive choice).
    :param generator: the random generator for ``"mean_noise"`` and ``"normal"`` (a CPU
        generator; the rows are drawn on the CPU and moved).
    :param std: the standard deviation for ``"normal"``; None: ``model.config.init_std``.
    :param noise_scale: the noise of ``"mean_noise"``, as a fraction of the old rows' spread.
    :returns: ``model``, grown.
    :raises ValueError: naming ``new_vocab_size`` when it is smaller than the current vocabulary
        or not an integer, ``init`` when it is unknown, ``std`` or ``noise_scale`` when negative or
        not finite.

    Introduced in {doc}`/book/part6/02-new-tokens`.
    """
    if isinstance(new_vocab_size, bool) or not isinstance(new_vocab_size, int):
        raise ValueError(f"new_vocab_size: must be an integer, got {new_vocab_size!r}")
    if init not in INITS:
        raise ValueError(f"init: must be one of {INITS}, got {init!r}")
    config = model.config
    if std is None:
        std = config.init_std
    for name, value in (("std", std), ("noise_scale", noise_scale)):
        if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
            raise ValueError(f"{name}: must be a finite non-negative number, got {value!r}")
    old_size = model.tok_emb.weight.size(0)
    if new_vocab_size < old_size:
        raise ValueError(
            f"new_vocab_size: must be at least the current vocabulary ({old_size}), "
            f"got {new_vocab_size}; shrinking would drop trained rows"
        )
    if new_vocab_size == old_size:
        return model
    tied = model.lm_head.weight is model.tok_emb.weight
    if tied != bool(getattr(config, "tie_weights", tied)):
        raise ValueError(
            f"tie_weights: the config says {config.tie_weights} but the head and the embedding "
            f"are {'' if tied else 'not '}the same tensor"
        )
    kwargs = dict(std=std, noise_scale=noise_scale, generator=generator)
    new_config = dataclasses.replace(config, vocab_size=new_vocab_size)
    with torch.no_grad():
        emb = _grow_parameter(model.tok_emb.weight, new_vocab_size, init, **kwargs)
        model.tok_emb.weight = emb
        model.tok_emb.num_embeddings = new_vocab_size
        if tied:
            model.lm_head.weight = emb
        else:
            model.lm_head.weight = _grow_parameter(
                model.lm_head.weight, new_vocab_size, init, **kwargs
            )
            if model.lm_head.bias is not None:
                # A bias is a one-column head: the mean keeps the new logit the old logits' mean.
                model.lm_head.bias = _grow_parameter(
                    model.lm_head.bias, new_vocab_size, init, **kwargs
                )
        model.lm_head.out_features = new_vocab_size
    model.config = new_config
    return model


def new_token_mass(
    model: nn.Module, ids: torch.Tensor | list[int], old_vocab_size: int
) -> torch.Tensor:
    r"""The probability the model puts on the ids ``old_vocab_size ..`` (the new ones) at each position.

    With ``k`` new rows initialised by ``grow_vocab(init="mean")`` this is at most $k / (V + k)$
    everywhere (see :func:`grow_vocab`); a random initialisation can exceed it. The model runs in
    evaluation mode (no dropout) without gradients; its mode is restored afterwards.

    :param model: a grown model (``model(ids).logits`` is ``(B, T, V_new)``).
    :param ids: input ids, ``(B, T)`` or ``(T,)`` (a tensor or a list).
    :param old_vocab_size: the vocabulary size before growing ($V$).
    :returns: float32 probabilities of the shape of ``ids``.
    :raises ValueError: naming ``old_vocab_size`` when it is not in ``1 .. V_new``.

    Introduced in {doc}`/book/part6/02-new-tokens`.
    """
    vocab = model.lm_head.weight.size(0)
    if isinstance(old_vocab_size, bool) or not isinstance(old_vocab_size, int):
        raise ValueError(f"old_vocab_size: must be an integer, got {old_vocab_size!r}")
    if not 1 <= old_vocab_size <= vocab:
        raise ValueError(f"old_vocab_size: must be in 1..{vocab}, got {old_vocab_size}")
    idx = torch.as_tensor(ids, dtype=torch.long, device=model.tok_emb.weight.device)
    flat = idx.dim() == 1
    if flat:
        idx = idx.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(idx).logits.float()  # (B, T, V)
    finally:
        model.train(was_training)
    logps = logits.log_softmax(dim=-1)  # (B, T, V)
    mass = logps[..., old_vocab_size:].logsumexp(dim=-1).exp()  # (B, T)
    return mass.squeeze(0) if flat else mass
