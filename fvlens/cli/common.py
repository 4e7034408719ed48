"""What every subcommand shares: model options, output folders and argument types.

Nothing here imports torch at import time, so ``fvlens --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["csv", "int_list", "positive_int", "output_dir", "add_model_args", "load_from_args",
           "DTYPES"]

DTYPES = ("float32", "bfloat16", "float16")


def csv(text: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers ≥ 1 (empty allowed)."""
    try:
        values = tuple(int(t) for t in csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers ≥ 1 such as 10,40; got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be ≥ 1; got {text!r}")
    return values


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def output_dir(path: str | Path) -> Path:
    """Check that ``path`` is (or can become) a writable directory, before any work is done.

    Raises:
        ValueError: the path is a file, cannot be created, or is not writable.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory (results.json and the "
                         "other outputs are written into it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fvlens-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--out {out} is not a writable directory ({err.strerror or err}); "
                         "choose another path") from None
    return out


def add_model_args(s: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype`` and ``--n-devices`` (every model-loading
    subcommand has them)."""
    s.add_argument("--model", default="smollm2-135m",
                   help="embedded name, .gguf file, local Hugging Face folder or "
                        "TransformerLens model name (default: %(default)s)")
    s.add_argument("--device", default=None,
                   help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    s.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="parameter dtype; weights are processed in float32, then cast "
                        "(default: %(default)s)")
    s.add_argument("--n-devices", type=positive_int, default=1,
                   help="spread the blocks over this many GPUs (TransformerLens n_devices)")


def load_from_args(args: argparse.Namespace):
    """``fvlens.models.load_model`` with the model options of ``args``."""
    import torch

    from fvlens.models import load_model

    kwargs = {"device": args.device, "dtype": getattr(torch, args.dtype)}
    if args.n_devices != 1:
        kwargs["n_devices"] = args.n_devices
    return load_model(args.model, **kwargs)
