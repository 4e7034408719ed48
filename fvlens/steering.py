"""Function vectors as hook lists: the averaged FV and the distributed FV.

- ``FunctionVector`` (Todd et al. 2024, Eq. 5): v = Σ_{(L,h) ∈ heads} mean_z[L,h] @ W_O[L,h],
  added to ``blocks.{layer}.hook_resid_post`` at the last position. ``b_O`` is not part of v:
  it is a per-layer bias that every forward pass adds whatever the heads do, so no head
  carries it (for models without ``b_O`` nothing changes).
- ``DistributedFV`` (Pham et al. 2026): each selected head's mean added at its own
  ``blocks.{L}.attn.hook_z[:, last, h]``; there is no injection layer.

Both edit only the last position (every fvlens batch is left-padded, so that is each row's
last real token), compose with any other hook list by ``+``, and leave nothing on the model.
During generation ``fvlens.generate`` applies them to the prompt's forward pass only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from fvlens.heads.scores import Head
from fvlens.hooks import HookList, hook_name
from fvlens.modeltype import Model

__all__ = ["FunctionVector", "DistributedFV", "add_at_last_position"]


def add_at_last_position(vector: Tensor, *, heads: Sequence[int] | None = None):
    """A hook function adding ``vector`` at the last position.

    Args:
        vector: ``[d_model]`` for a residual hook, or ``[n, d_head]`` for ``hook_z`` with
            ``heads`` giving the n head indices.
        heads: head indices of a ``hook_z`` edit; None for a residual-stream edit.
    """
    idx = None if heads is None else torch.tensor(list(heads), dtype=torch.long)

    def hook(x: Tensor, hook) -> Tensor:
        x = x.clone()
        v = vector.to(device=x.device, dtype=x.dtype)
        if idx is None:
            x[:, -1] += v
        else:
            if idx.numel() and int(idx.max()) >= x.shape[2]:
                raise ValueError(f"{hook.name} has {x.shape[2]} heads; this vector edits "
                                 f"head {int(idx.max())}: it was built for another model")
            x[:, -1, idx.to(x.device)] += v
        return x

    return hook


def _check_heads(model: Model, heads: Sequence[Head]) -> list[Head]:
    """The heads as ``(int, int)`` pairs, checked against the model."""
    heads = [tuple(int(v) for v in h) for h in heads]  # type: ignore[misc]
    _check_head_list(heads)
    for layer, head in heads:
        if not (layer < model.cfg.n_layers and head < model.cfg.n_heads):
            raise ValueError(f"head ({layer}, {head}) does not exist: the model has "
                             f"{model.cfg.n_layers} layers of {model.cfg.n_heads} heads")
    return heads  # type: ignore[return-value]


def _check_head_list(heads: Sequence[Head]) -> None:
    """Heads are distinct ``(layer, head)`` pairs of non-negative ints (a negative index would
    silently wrap to another head)."""
    for h in heads:
        if (len(h) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0
                               for v in h)):
            raise ValueError(f"a head is a (layer, head) pair of non-negative ints, got {h!r}")
    if len(set(map(tuple, heads))) != len(heads):
        dup = sorted({tuple(h) for h in heads if list(map(tuple, heads)).count(tuple(h)) > 1})
        raise ValueError(f"heads must be distinct; repeated: {dup}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FunctionVector:
    """Sum of the selected heads' mean outputs, added to one layer's residual stream.

    Attributes:
        vector: the function vector ``[d_model]``.
        heads: the heads it was built from.
        layer: default injection layer (index of the block whose ``hook_resid_post`` gets v).
    """

    vector: Float[Tensor, " d_model"]
    heads: tuple[Head, ...] = ()
    layer: int | None = None

    @classmethod
    def from_heads(cls, model: Model, mean_z: Float[Tensor, "n_layers n_heads d_head"],
                   heads: Sequence[Head], *, layer: int | None = None) -> FunctionVector:
        """Build v = Σ mean_z[L,h] @ W_O[L,h] over ``heads``."""
        heads = _check_heads(model, heads)
        v = torch.zeros(model.cfg.d_model)
        with torch.no_grad():
            for layer_idx, h in heads:
                w_o = model.blocks[layer_idx].attn.W_O[h].detach().float().cpu()
                v += mean_z[layer_idx, h].float().cpu() @ w_o
        return cls(vector=v, heads=tuple((int(a), int(b)) for a, b in heads), layer=layer)

    def hooks(self, layer: int | None = None, *, scale: float = 1.0) -> HookList:
        """Hook list adding ``scale * vector`` at the last position of ``hook_resid_post``.

        Args:
            layer: block index; default ``self.layer``.
            scale: multiplier of the vector.
        """
        layer = self.layer if layer is None else layer
        if layer is None:
            raise ValueError("no injection layer: pass layer=… or build the vector with one "
                             "(fvlens picks it by a layer sweep on a validation split)")
        return [(hook_name("resid_post", layer), add_at_last_position(scale * self.vector))]

    def with_layer(self, layer: int) -> FunctionVector:
        return dataclasses.replace(self, layer=layer)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedFV:
    """Each selected head's mean activation, added at that head's own ``hook_z``.

    Attributes:
        heads: the selected heads ``(layer, head)``.
        means: ``[n_selected, d_head]``, row i the mean of ``heads[i]``.
    """

    heads: tuple[Head, ...]
    means: Float[Tensor, "n_selected d_head"]

    def __post_init__(self) -> None:
        if len(self.heads) != self.means.shape[0]:
            raise ValueError(f"{len(self.heads)} heads but {self.means.shape[0]} mean rows")
        _check_head_list(self.heads)

    @classmethod
    def from_heads(cls, model: Model, mean_z: Float[Tensor, "n_layers n_heads d_head"],
                   heads: Sequence[Head]) -> DistributedFV:
        heads = tuple(_check_heads(model, heads))
        means = torch.stack([mean_z[a, b].float().cpu() for a, b in heads]) if heads else \
            torch.zeros(0, model.cfg.d_head)
        return cls(heads=heads, means=means)

    def first_layer(self, model: Model) -> int:
        """The lowest block this DFV edits (``n_layers`` when it has no heads): everything
        below is unchanged by it."""
        return min((layer for layer, _ in self.heads), default=model.cfg.n_layers)

    def hooks(self, *, scale: float = 1.0) -> HookList:
        """Hook list, one hook per layer that has selected heads."""
        by_layer: dict[int, list[int]] = {}
        for i, (layer, _) in enumerate(self.heads):
            by_layer.setdefault(layer, []).append(i)
        out: HookList = []
        for layer in sorted(by_layer):
            rows = by_layer[layer]
            heads = [self.heads[i][1] for i in rows]
            out.append((hook_name("z", layer),
                        add_at_last_position(scale * self.means[rows], heads=heads)))
        return out
