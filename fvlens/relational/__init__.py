"""Relational knowledge with function vectors (Kang, Wu & Lu 2026).

- ``finetune``: train an FV or DFV on a few pairs with the model frozen (``finetune_many``:
  many FVs in one batch).
- ``bank`` / ``quality``: relation vectors fitted with their layer chosen on validation, each
  with its validation top-1 against the ICL reference; which of them pass.
- ``decoding``: read a vector through the unembedding (top tokens, relation-word ranks).
- ``similarity``: compare relation and word-pair representations with human similarity
  ratings (Chen, Peterson & Griffiths 2017).
- ``composite`` / ``analogies`` / ``items`` / ``itemgen``: weighted sums of a bank of relation
  vectors that solve A:B::C:? analogies, and the project's analogy items.

See ``docs/relational.md``.
"""

from fvlens.relational.analogies import AnalogyConfig, evaluate_analogies
from fvlens.relational.bank import RelationBank, build_bank, fit_relations
from fvlens.relational.comparison import held_out_comparison
from fvlens.relational.composite import CompositeConfig, fit_weights
from fvlens.relational.decoding import decode, decode_heads, relation_word_rank
from fvlens.relational.finetune import (FinetuneConfig, FinetuneResult, finetune, finetune_many,
                                        load_vector, save_vector)
from fvlens.relational.itemgen import builtin_items, hard_items
from fvlens.relational.items import AnalogyItem, load_items
from fvlens.relational.quality import VectorQuality
from fvlens.relational.ratings import read_ratings
from fvlens.relational.similarity_study import run_similarity

__all__ = [
    "AnalogyConfig",
    "AnalogyItem",
    "CompositeConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "RelationBank",
    "VectorQuality",
    "build_bank",
    "builtin_items",
    "decode",
    "decode_heads",
    "evaluate_analogies",
    "finetune",
    "finetune_many",
    "fit_relations",
    "fit_weights",
    "hard_items",
    "held_out_comparison",
    "load_items",
    "load_vector",
    "read_ratings",
    "relation_word_rank",
    "run_similarity",
    "save_vector",
]
