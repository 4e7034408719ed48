"""AttnLRP (Achtibat et al., ICML 2024) on TransformerLens hook points: ``rules`` (the rules
and ``attnlrp_hooks``) and ``relevance`` (``relevance_at``, ``explain``, ``explain_batch``)."""

from fvlens.lrp.relevance import BatchRelevance, Relevance, explain, explain_batch, relevance_at
from fvlens.lrp.rules import (
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
