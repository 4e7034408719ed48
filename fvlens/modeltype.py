"""The model type in fvlens's signatures: a TransformerLens ``HookedTransformer`` or
``TransformerBridge``.

Type checkers see the union of the two classes. At run time (the jaxtyping/beartype checks of
the tests) ``Model`` is ``torch.nn.Module``, their common base, so that importing fvlens needs
neither class: TransformerLens 4 has no ``HookedTransformer``, and importing the bridge is
slow. What differs between the two lives in ``fvlens.backend``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["Model"]

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    Model = HookedTransformer | TransformerBridge
else:
    from torch.nn import Module as Model
