"""AttnLRP (Achtibat et al., ICML 2024) as a hook list.

AttnLRP explains a logit by relevance = activation × gradient, where the gradient is taken
through a model whose backward pass has been modified so that gradient × input obeys the LRP
rules: the identity rule for element-wise nonlinearities and normalisations, the uniform rule
for products of two activations (Q·Kᵀ, A·V, the gate of a gated MLP), and the ordinary
gradient through softmax (which *is* the paper's softmax rule, Prop. 3.1). Every rule here
keeps the forward value bit-exact and changes only the gradient, so ``attnlrp_hooks(model)``
composes with any other hook list. Paper: https://arxiv.org/abs/2402.05602

Modules: ``rules`` (the rules and ``attnlrp_hooks``) and ``relevance`` (``relevance_at``,
``explain``, ``explain_batch``).
"""

from fvlens.attnlrp.relevance import BatchRelevance, Relevance, explain, explain_batch, relevance_at
from fvlens.attnlrp.rules import (
    attnlrp_hooks,
    gated_product_rule,
    identity_rule,
    norm_rule,
    softcap_input_rule,
    uniform_rule,
)

__all__ = [
    "BatchRelevance",
    "Relevance",
    "attnlrp_hooks",
    "explain",
    "explain_batch",
    "gated_product_rule",
    "identity_rule",
    "norm_rule",
    "relevance_at",
    "softcap_input_rule",
    "uniform_rule",
]
