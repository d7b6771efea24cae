r"""Low-rank adapters (LoRA): train a small update beside each frozen linear layer.

A pretrained layer computes $y = W x$ with $W$ of shape ``(out, in)``. LoRA (Hu et al., 2021) keeps
$W$ frozen and learns a correction of rank at most $r$, written as the product of two thin matrices,

$$y = W x + \frac{\alpha}{r}\, B A x, \qquad A \in \mathbb{R}^{r \times \text{in}},\;
B \in \mathbb{R}^{\text{out} \times r},$$

so a layer trains $r(\text{in} + \text{out})$ numbers instead of $\text{in} \cdot \text{out}$. The
module offers the layer (:class:`LoRALinear`), the surgery that puts it into a model
(:func:`inject_lora`) and takes it out again (:func:`merge_lora`), parameter counts, and a small
checksummed safetensors file that holds only the adapters (:func:`save_adapters`,
:func:`load_adapters`); the file layer is :mod:`llmbook.storage`'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.storage import sha256_hex, tensors_to_bytes, write_atomic

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The projections adapted by default: every linear layer of a Llama-style block."""

_CONFIG_KEY = "llmbook.lora"
_SHA_KEY = "llmbook.lora.sha256"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_settings(r, alpha, dropout) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"r: must be an integer >= 1, got {r!r}")
    if not _finite(alpha) or alpha <= 0:
        raise ValueError(f"alpha: must be a finite number > 0, got {alpha!r}")
    if not _finite(dropout) or not 0 <= dropout < 1:
        raise ValueError(f"dropout: must be a number in [0, 1), got {dropout!r}")


class LoRALinear(nn.Module):
    r"""A frozen ``nn.Linear`` plus a trainable low-rank update: $W x + b + \frac{\alpha}{r} B A x$.

    ``lora_A`` ($r \times \text{in}$) starts from PyTorch's Kaiming-uniform default for a linear
    layer (``a = sqrt(5)``, as peft does) and ``lora_B`` ($\text{out} \times r$) starts at zero, so
    $BA = 0$: the adapted model computes exactly what the base model did, and training starts from
    the pretrained function rather than from a random perturbation of it. A is random so that the
    gradient of B, $\partial L / \partial B = \frac{\alpha}{r}\, g\, (A x)^\top$, is not zero (with
    both at zero neither would ever move).

    Why $\alpha / r$: each of the $r$ columns of $B$ contributes one rank-one term to $BA x$, so with
    $A$'s entries on a fixed scale the update grows with $r$. Dividing by $r$ keeps its size about
    the same when $r$ changes, and a learning rate (and $\alpha$) tuned at one rank keeps working at
    another. Dropout, when asked for, acts on the input of the A branch only; the frozen path sees
    the clean input.

    :meth:`merge` folds $\frac{\alpha}{r} BA$ into the base weight so that inference costs one
    matrix product again; :meth:`unmerge` takes it back out. A merged layer is for inference: its
    forward is the base layer alone, so no gradient reaches A and B until it is unmerged.

    :param base: the layer to adapt; kept as ``self.base`` and frozen (weight and bias).
    :param r: rank of the update, an integer >= 1.
    :param alpha: scale numerator, a finite number > 0; the update is multiplied by ``alpha / r``.
    :param dropout: dropout probability on the input of the A branch, in [0, 1).
    :param generator: random generator for A's initialisation (None: the global one).
    :raises ValueError: for a bad ``r``, ``alpha`` or ``dropout`` (the message starts with its name),
        or when ``base`` is not an ``nn.Linear``.

    Introduced in {doc}`/book/part10/02-lora`.
    """

    def __init__(
        self,
        base: nn.Linear,
        *,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base: must be an nn.Linear, got {type(base).__name__}")
        _check_settings(r, alpha, dropout)
        self.base = base
        self.base.requires_grad_(False)
        self.r, self.alpha, self.dropout_p = r, alpha, float(dropout)
        self.scaling = alpha / r
        self.merged = False
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base.weight
        # Initialise in float32 on the CPU, then move: the same seed gives the same A everywhere.
        a = torch.empty(r, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(device=weight.device, dtype=weight.dtype))  # (r, in)
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, r, device=weight.device, dtype=weight.dtype)
        )  # (out, r)

    @property
    def in_features(self) -> int:
        """Input width of the wrapped layer."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """Output width of the wrapped layer."""
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the base layer and, unless merged, add the scaled low-rank branch.

        :param x: ``(..., in)``.
        :returns: ``(..., out)``.
        """
        y = self.base(x)  # (..., out)
        if self.merged:
            return y
        h = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        return y + F.linear(h, self.lora_B) * self.scaling  # (..., out)

    def delta_weight(self) -> torch.Tensor:
        r"""The update the adapter adds to the base weight, $\frac{\alpha}{r} B A$.

        :returns: ``(out, in)``, in the adapter's dtype.
        """
        return (self.lora_B @ self.lora_A) * self.scaling

    def _add_to_base(self, sign: float) -> None:
        weight = self.base.weight
        with torch.no_grad():
            # Low-precision weights are updated through float32, so merging rounds once, not twice.
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
            weight.copy_((weight.float() + sign * delta).to(weight.dtype))

    def merge(self) -> None:
        """Fold the update into ``base.weight`` in place; the forward then skips the branch.

        :raises RuntimeError: when the layer is merged already.
        """
        if self.merged:
            raise RuntimeError("merge: this LoRA layer is merged already")
        self._add_to_base(1.0)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the update from ``base.weight`` again (exact up to float rounding).

        :raises RuntimeError: when the layer is not merged.
        """
        if not self.merged:
            raise RuntimeError("unmerge: this LoRA layer is not merged")
        self._add_to_base(-1.0)
        self.merged = False

    def extra_repr(self) -> str:
        """The sizes and settings shown by ``print(model)``.

        :returns: one line.
        """
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha}, dropout={self.dropout_p}, merged={self.merged}"
        )


def _check_targets(targets) -> tuple[str, ...]:
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets:
        raise ValueError(
            f"targets: must be a non-empty list or tuple of module names, got {targets!r}"
        )
    for t in targets:
        if not isinstance(t, str) or not t or t.startswith(".") or t.endswith("."):
            raise ValueError(f"targets: each entry must be a dotted module name, got {t!r}")
    return tuple(targets)


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _find_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The names of the plain linear layers ``targets`` selects; refuses adapted or tied layers."""
    adapted = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    found = []
    for name, module in model.named_modules():
        if not name or not _matches(name, targets):
            continue
        inside = next((a for a in adapted if name == a or name.startswith(a + ".")), None)
        if inside is not None:
            raise ValueError(
                f"targets: {inside} already has a LoRA adapter (inject once per layer)"
            )
        if not isinstance(module, nn.Linear):
            continue
        shared = [n for n in owners[id(module.weight)] if n != f"{name}.weight"]
        if shared:
            raise ValueError(
                f"targets: {name}.weight is tied to {shared[0]}; merging an adapter into it would "
                "change both, so tied layers cannot be adapted"
            )
        found.append(name)
    return sorted(found)


def inject_lora(
    model: nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    seed: int | None = None,
) -> list[str]:
    """Replace the selected ``nn.Linear`` layers of ``model`` by :class:`LoRALinear`, in place, and
    freeze everything else.

    The rule for ``targets``: a target selects a linear layer when it equals the layer's full dotted
    name or a dotted suffix of it. ``"q_proj"`` selects ``blocks.0.attn.q_proj`` and every other
    ``q_proj``; ``"blocks.0.attn.q_proj"`` selects that layer alone; ``"proj"`` selects nothing
    (suffixes are cut at dots). Afterwards only the adapters' A and B require gradients.

    :param model: the model to adapt (changed in place).
    :param r: rank of every adapter.
    :param alpha: scale numerator of every adapter (the update is multiplied by ``alpha / r``).
    :param dropout: dropout on the A branch's input, in [0, 1).
    :param targets: the module names to adapt (see the rule above).
    :param seed: seed for the A matrices (None: draw from the global random generator).
    :returns: the names of the replaced layers, sorted.
    :raises ValueError: for a bad setting, when nothing matches ``targets``, when a matched layer
        has an adapter already, or when its weight is tied to another parameter.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    _check_settings(r, alpha, dropout)
    targets = _check_targets(targets)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f"seed: must be an integer or None, got {seed!r}")
    names = _find_targets(model, targets)
    if not names:
        raise ValueError(f"targets: no nn.Linear layer of the model matches {list(targets)}")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = LoRALinear(
            getattr(parent, child), r=r, alpha=alpha, dropout=dropout, generator=generator
        )
        setattr(parent, child, layer)
    for p in lora_parameters(model):  # those of earlier injections too
        p.requires_grad_(True)
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The adapted layers of a model, by full dotted name.

    :param model: any module.
    :returns: name to :class:`LoRALinear`, in module order.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter tensors (every A and B), the parameters to hand to an optimizer.

    :param model: a model after :func:`inject_lora`.
    :returns: the parameters, A before B for each layer, in module order.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    return [p for layer in lora_layers(model).values() for p in (layer.lora_A, layer.lora_B)]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """How many parameters a model has, trains, and spends on adapters (tied tensors count once).

    :param model: any module.
    :returns: ``{"trainable": ..., "total": ..., "adapter": ...}``; ``total`` includes the adapters.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    params = list(model.parameters())  # already de-duplicated
    return {
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "total": sum(p.numel() for p in params),
        "adapter": sum(p.numel() for p in lora_parameters(model)),
    }


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight and put the plain ``nn.Linear`` back in its place.

    Afterwards the model has no LoRA layers left (a merged GPT is a plain GPT again, with the same
    parameter names as before injection) and computes what the adapted model computed, up to float
    rounding. Parameters keep ``requires_grad=False``; call ``model.requires_grad_(True)`` to train
    the whole model further.

    :param model: a model after :func:`inject_lora` (changed in place).
    :returns: the same model object.
    :raises ValueError: when the model has no LoRA layers.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model: has no LoRA layers to merge")
    for name, layer in layers.items():
        if not layer.merged:
            layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, keyed by their full dotted names (``...q_proj.lora_A``).

    :param model: a model after :func:`inject_lora`.
    :returns: name to tensor (detached, sharing memory with the model).

    Introduced in {doc}`/book/part10/02-lora`.
    """
    return {
        f"{name}.{kind}": getattr(layer, kind).detach()
        for name, layer in lora_layers(model).items()
        for kind in ("lora_A", "lora_B")
    }


def _checksum(config_json: str, tensors: dict[str, torch.Tensor]) -> str:
    # The checksum covers the settings too: a changed alpha would load without any shape error.
    return sha256_hex(config_json.encode() + tensors_to_bytes(tensors))


def save_adapters(model: nn.Module, path: str | Path, *, config: dict) -> Path:
    """Write the adapters to one small safetensors file, with their settings and a sha256.

    The file's metadata holds ``config`` as JSON (``r``, ``alpha``, ``dropout``, ``targets`` and any
    other JSON values, e.g. the base model's name) and the sha256 of that JSON together with the
    tensors; :func:`load_adapters` refuses a file whose bytes changed. The settings must describe
    the model's adapters: every layer has this ``r``, ``alpha`` and ``dropout``, and ``targets``
    selects exactly the adapted layers, so that loading into a fresh base model rebuilds them.

    :param model: a model after :func:`inject_lora`.
    :param path: the file to write (atomically; the folder must exist).
    :param config: the settings :func:`inject_lora` was called with (``dropout`` defaults to 0).
    :returns: the path.
    :raises ValueError: when the model has no adapters, or ``config`` is not JSON or does not
        describe them.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model: has no LoRA layers to save")
    if not isinstance(config, dict) or not {"r", "alpha", "targets"} <= set(config):
        raise ValueError(f"config: must be a dict with r, alpha and targets, got {config!r}")
    config = {"dropout": 0.0, **config, "targets": list(_check_targets(config["targets"]))}
    _check_settings(config["r"], config["alpha"], config["dropout"])
    want = (config["r"], config["alpha"], config["dropout"])
    for name, layer in layers.items():
        if (layer.r, layer.alpha, layer.dropout_p) != want:
            raise ValueError(
                f"config: {name} has r, alpha, dropout = {layer.r}, {layer.alpha}, "
                f"{layer.dropout_p}, not the {want} given"
            )
        if layer.merged:
            raise ValueError(f"model: {name} is merged; unmerge it before saving its adapter")
    selected = sorted(n for n, _ in model.named_modules() if _matches(n, tuple(config["targets"])))
    if selected != sorted(layers):
        raise ValueError(
            f"config: targets {config['targets']} select {selected[:5]}, not the adapted layers "
            f"{sorted(layers)[:5]}"
        )
    try:
        config_json = json.dumps(config, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config: must hold JSON values only ({err})") from err
    tensors = {k: t.cpu().contiguous() for k, t in lora_state_dict(model).items()}
    from safetensors.torch import save

    meta = {"format": "pt", _CONFIG_KEY: config_json, _SHA_KEY: _checksum(config_json, tensors)}
    write_atomic(path, save(tensors, metadata=meta))
    return Path(path)


def _read_adapter_file(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such adapter file") from None
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: truncated or corrupt adapter file ({err})") from err
    if _CONFIG_KEY not in meta or _SHA_KEY not in meta:
        raise ValueError(f"{path}: not an llmbook adapter file (no {_CONFIG_KEY} metadata)")
    if _checksum(meta[_CONFIG_KEY], tensors) != meta[_SHA_KEY]:
        raise ValueError(f"{path}: corrupt adapter file (its sha256 does not match its contents)")
    try:
        config = json.loads(meta[_CONFIG_KEY])
        _check_settings(config["r"], config["alpha"], config["dropout"])
        config["targets"] = list(_check_targets(config["targets"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: unusable adapter settings ({err})") from err
    return config, tensors


def load_adapters(model: nn.Module, path: str | Path) -> dict:
    """Load adapters saved by :func:`save_adapters` into ``model``, injecting them first if needed.

    A model without LoRA layers gets them from the stored settings (:func:`inject_lora`, which
    freezes the rest); a model that has them must have the same layers, ``r`` and ``alpha``. Every
    check (checksum, settings, names, shapes) runs before the model is touched, so a file that does
    not fit leaves the model as it was. Tensors are copied into the model's device and dtype.

    :param model: the base model (or the same model already adapted); changed in place.
    :param path: the adapter file.
    :returns: the stored settings (``r``, ``alpha``, ``dropout``, ``targets`` and any extras).
    :raises ValueError: naming the file, when it is missing, corrupt, or does not fit the model.

    Introduced in {doc}`/book/part10/02-lora`.
    """
    path = Path(path)
    config, tensors = _read_adapter_file(path)
    r, alpha = config["r"], config["alpha"]
    layers = lora_layers(model)
    for name, layer in layers.items():
        if (layer.r, layer.alpha) != (r, alpha) or layer.merged:
            raise ValueError(
                f"{path}: stored r={r}, alpha={alpha} but the model's {name} has "
                f"r={layer.r}, alpha={layer.alpha}{' (merged)' if layer.merged else ''}"
            )
    try:  # the layers an injection would adapt, found without touching the model
        names = sorted(layers) or _find_targets(model, tuple(config["targets"]))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    shapes = {}
    for n in names:
        layer = model.get_submodule(n)
        shapes[f"{n}.lora_A"] = (r, layer.in_features)
        shapes[f"{n}.lora_B"] = (layer.out_features, r)
    missing, unexpected = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(tensors[key].shape)}, the model expects {shape}"
            )
    if not layers:
        inject_lora(
            model, r=r, alpha=alpha, dropout=config["dropout"], targets=config["targets"], seed=0
        )
    with torch.no_grad():
        for key, value in lora_state_dict(model).items():
            value.copy_(tensors[key])
    return config
