"""fvlens: function vectors on TransformerLens."""

from fvlens.hooks import HookFn, HookList, assert_no_hooks, hook_name

__version__ = "0.1.0"

__all__ = [
    "HookFn",
    "HookList",
    "assert_no_hooks",
    "hook_name",
    "__version__",
]
