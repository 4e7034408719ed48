"""fvlens: function vectors on TransformerLens.

Find the attention heads that carry a task, turn their activations into vectors, and steer a
model with them. Every intervention is a hook list (see ``fvlens.hooks``).

The names below are imported on first use (PEP 562), so ``import fvlens`` and the command
line's ``--help`` start without loading torch; ``from fvlens import X`` works as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fvlens._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "BatchRelevance": "fvlens.attnlrp", "Relevance": "fvlens.attnlrp",
    "attnlrp_hooks": "fvlens.attnlrp", "explain": "fvlens.attnlrp",
    "explain_batch": "fvlens.attnlrp",
    "mean_head_activations": "fvlens.activations",
    "Evaluation": "fvlens.evaluation", "baseline": "fvlens.evaluation",
    "evaluate": "fvlens.evaluation", "last_logits": "fvlens.evaluation",
    "generate": "fvlens.generation", "side_by_side": "fvlens.generation",
    "Head": "fvlens.heads", "HeadScores": "fvlens.heads", "overlap": "fvlens.heads",
    "indirect_effects": "fvlens.heads.aie", "patch_head_hooks": "fvlens.heads.aie",
    "score_heads": "fvlens.heads.select",
    "HookFn": "fvlens.hooks", "HookList": "fvlens.hooks", "assert_no_hooks": "fvlens.hooks",
    "hook_name": "fvlens.hooks",
    "Processing": "fvlens.models", "load_model": "fvlens.models",
    "fingerprint": "fvlens.models", "fingerprint_mismatch": "fvlens.models",
    "PromptBatch": "fvlens.batch", "Template": "fvlens.batch",
    "corrupted": "fvlens.prompts", "icl_prompts": "fvlens.prompts",
    "instruction_prompts": "fvlens.prompts", "zero_shot_prompts": "fvlens.prompts",
    "RunConfig": "fvlens.plan", "extract_vectors": "fvlens.plan",
    "run": "fvlens.pipeline",
    "RunResult": "fvlens.results", "TaskResult": "fvlens.results",
    "DistributedFV": "fvlens.steering", "FunctionVector": "fvlens.steering",
    "save_vector": "fvlens.vectors", "load_vector": "fvlens.vectors",
    "Instruction": "fvlens.tasks", "Pair": "fvlens.tasks", "Task": "fvlens.tasks",
    "import_davidson": "fvlens.importers", "import_todd": "fvlens.importers",
    "list_tasks": "fvlens.tasks", "load_task": "fvlens.tasks", "save_task": "fvlens.tasks",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from fvlens.activations import mean_head_activations
    from fvlens.attnlrp import BatchRelevance, Relevance, attnlrp_hooks, explain, explain_batch
    from fvlens.batch import PromptBatch, Template
    from fvlens.evaluation import Evaluation, baseline, evaluate, last_logits
    from fvlens.generation import generate, side_by_side
    from fvlens.heads import Head, HeadScores, overlap
    from fvlens.heads.aie import indirect_effects, patch_head_hooks
    from fvlens.heads.select import score_heads
    from fvlens.hooks import HookFn, HookList, assert_no_hooks, hook_name
    from fvlens.models import Processing, fingerprint, fingerprint_mismatch, load_model
    from fvlens.pipeline import run
    from fvlens.plan import RunConfig, extract_vectors
    from fvlens.prompts import corrupted, icl_prompts, instruction_prompts, zero_shot_prompts
    from fvlens.results import RunResult, TaskResult
    from fvlens.steering import DistributedFV, FunctionVector
    from fvlens.vectors import load_vector, save_vector
    from fvlens.importers import import_davidson, import_todd
    from fvlens.tasks import Instruction, Pair, Task, list_tasks, load_task, save_task
