"""The measured numbers of docs/analyses.md: strategies + depth, transfer, frames.

Each part runs the ``fvlens`` subcommand of the same name into ``runs/analyses/PART`` (JSON,
vectors, HTML figures) and copies its results.json — settings, versions and machine included —
to ``benchmarks/results/analyses_PART.json``::

    OMP_NUM_THREADS=1 python benchmarks/analyses.py --part strategies
    OMP_NUM_THREADS=1 python benchmarks/analyses.py --part transfer
    OMP_NUM_THREADS=1 python benchmarks/analyses.py --part frames

On a shared 2-core CPU use one thread: with two threads on oversubscribed cores a 135M
forward pass took 20× longer (24 s vs 1 s) in our measurements.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from fvlens.cli.analyses import main as fvlens_main

ROOT = Path(__file__).resolve().parent
TRANSFER_TASKS = ("capitalize,present-past,singular-plural,choose_first_of_3,"
                  "lowercase_first_letter,capitalize_first_letter,antonym")
# The instruction each task's model follows best (fvlens frames --survey, top-1 on 24 queries).
FRAME_TASKS = "landmark-country:4,animal_v_object_3:1,choose_first_of_3:4,capitalize:0"

SURVEY_TASKS = ("animal_v_object_3,antonym,capitalize,capitalize_first_letter,choose_first_of_3,"
                "choose_last_of_3,landmark-country,lowercase_first_letter,present-past,"
                "product-company,singular-plural")

PARTS = {
    "strategies": ["strategies", "--tasks", "capitalize,present-past"],
    "transfer": ["transfer", "--tasks", TRANSFER_TASKS, "--strategy", "fv_gradient"],
    "frames": ["frames", "--task", FRAME_TASKS, "--survey", SURVEY_TASKS],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=sorted(PARTS), required=True)
    ap.add_argument("--runs", default="runs/analyses", help="where the subcommand writes")
    ap.add_argument("extra", nargs="*", help="more options for the subcommand")
    args = ap.parse_args()
    out = Path(args.runs) / args.part
    rc = fvlens_main(PARTS[args.part] + ["--out", str(out)] + args.extra)
    if rc == 0:
        dest = ROOT / "results" / f"analyses_{args.part}.json"
        shutil.copyfile(out / "results.json", dest)
        print(f"copied to {dest}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
