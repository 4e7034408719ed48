"""Where fvlens keeps converted weights and assembled model files."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The weight cache: ``$FVLENS_CACHE``, else the platform's user cache dir for fvlens."""
    env = os.environ.get("FVLENS_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fvlens"))
