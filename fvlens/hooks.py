"""Hook lists: the one currency of interventions in fvlens.

Every intervention (a function vector, a distributed function vector, the AttnLRP rules, a
head patch) is a ``HookList``: a list of ``(hook_name, hook_fn)`` pairs that TransformerLens
applies with ``model.hooks(fwd_hooks=...)`` or ``model.run_with_hooks(...)``. Lists compose by
``+`` and leave the model untouched once the context exits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from torch import Tensor

from fvlens.backend import hook_names, hook_points
from fvlens.modeltype import Model

HookFn = Callable[..., Tensor | None]
HookList = list[tuple[str, HookFn]]

__all__ = [
    "HookFn",
    "HookList",
    "hook_name",
    "check_hook_names",
    "assert_no_hooks",
    "count_hooks",
    "frozen_parameters",
]


def hook_name(kind: str, layer: int | None = None) -> str:
    """The TransformerLens hook name for an activation kind.

    Args:
        kind: a hook suffix such as ``"z"``, ``"resid_post"``, ``"attn.hook_pattern"``,
            ``"ln1.hook_scale"`` or ``"mlp.hook_post"``; or a full name without a layer
            (``"hook_embed"``, ``"ln_final.hook_scale"``).
        layer: the block index, or None for a name outside the blocks.

    Returns:
        The full hook name, e.g. ``blocks.3.attn.hook_z``.
    """
    short = {
        "z": "attn.hook_z",
        "pattern": "attn.hook_pattern",
        "attn_scores": "attn.hook_attn_scores",
        "v": "attn.hook_v",
        "q": "attn.hook_q",
        "k": "attn.hook_k",
        "rot_k": "attn.hook_rot_k",
        "rot_q": "attn.hook_rot_q",
        "result": "attn.hook_result",
        "resid_pre": "hook_resid_pre",
        "resid_mid": "hook_resid_mid",
        "resid_post": "hook_resid_post",
        "attn_out": "hook_attn_out",
        "mlp_out": "hook_mlp_out",
    }
    suffix = short.get(kind, kind)
    if layer is None:
        return suffix
    return f"blocks.{layer}.{suffix}"


def check_hook_names(model: Model, hooks: Sequence[tuple[str, HookFn]]) -> None:
    """Raise a ValueError naming the nearest existing hooks when a hook name is unknown."""
    known = hook_names(model)
    for name, _ in hooks:
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, list(known), n=5)
            raise ValueError(
                f"unknown hook point {name!r} for this model; close matches: {close}. "
                "List them all with sorted(model.hook_dict)."
            )


def count_hooks(model: Model) -> int:
    """Number of hooks registered on the hook points of ``model``, each counted once.

    Counts what torch will call (forward, forward-pre, backward and backward-pre hooks of every
    ``HookPoint``), so a hook added through TransformerLens (``model.hooks``,
    ``add_hook``) or directly through torch is seen, and none twice (a bridge lists some hook
    points under several names).
    """
    total = 0
    for hp in hook_points(model):
        total += len(hp._forward_hooks) + len(hp._forward_pre_hooks)
        total += len(hp._backward_hooks) + len(hp._backward_pre_hooks)
    return total


def assert_no_hooks(model: Model) -> None:
    """Raise an AssertionError if any hook is left on the model."""
    n = count_hooks(model)
    if n:
        raise AssertionError(f"{n} hooks left on the model; call model.reset_hooks()")


@contextlib.contextmanager
def frozen_parameters(model: Model) -> Iterator[None]:
    """Turn off ``requires_grad`` on every parameter of ``model``; restore each flag on exit.

    Inside, a backward pass reaches only what the caller made a leaf (a hooked activation, a
    trained vector), never the weights.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
