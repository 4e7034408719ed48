"""Instruction mode's screen over tasks: the answer format chosen on validation and Pham et al.'s filter.

    python benchmarks/instruction_screen.py --model qwen2.5-coder-0.5b --chat-template auto \
        --out benchmarks/results/instruction_screen_qwen.json

For every task (default: every built-in task with instructions) this runs exactly the first
steps of ``fvlens run --prompt-mode instruction`` (``fvlens.plan.screen_task``, same splits and
seeds): each candidate answer format's validation top-1 (and the plain template's, so the JSON
says per task which template the model answers better, on validation only), the chosen format,
and the filter's per-instruction counts. The tasks that pass are those ``fvlens run`` keeps;
the JSON (written after every task) records the settings, versions, machine and wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fvlens.models import load_model  # noqa: E402
from fvlens.plan import RunConfig, screen_task  # noqa: E402
from fvlens.provenance import json_safe, machine, versions  # noqa: E402
from fvlens.tasks import list_tasks, load_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--chat-template", default="auto", choices=["none", "auto"])
    ap.add_argument("--targets", default="first", choices=["first", "full"])
    ap.add_argument("--min-correct", type=int, default=20)
    ap.add_argument("--instructions", type=int, default=5)
    ap.add_argument("--n-val", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    names = ([n for n in list_tasks() if load_task(n).instructions] if args.tasks == "all"
             else [t.strip() for t in args.tasks.split(",") if t.strip()])
    cfg = RunConfig(tasks=tuple(names), prompt_mode="instruction",
                    chat_template=args.chat_template, targets=args.targets,
                    min_correct=args.min_correct, n_instructions=args.instructions,
                    n_val=args.n_val, seed=args.seed)
    t0 = time.perf_counter()
    model = load_model(args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    out = {"model": args.model, "settings": vars(args) | {"load_seconds":
                                                         time.perf_counter() - t0},
           "versions": versions(), "machine": machine(), "tasks": {}}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        t = time.perf_counter()
        sp, choice, filt = screen_task(model, load_task(name), cfg)
        rec = {"answer_format": choice.to_json(), "n_val": len(sp.val),
               "n_filter_pool": len(sp.mean), "seconds": time.perf_counter() - t}
        if filt is not None:
            rec["filter"] = filt.to_json()
            rec["passed"] = filt.passed
        out["tasks"][name] = rec
        print(f"{name}: {choice.name} {json.dumps(choice.scores)} passed={rec.get('passed')} "
              f"{rec['seconds']:.0f}s", flush=True)
        out["seconds"] = time.perf_counter() - t0
        out["passed"] = [n for n, r in out["tasks"].items() if r.get("passed")]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(json_safe(out), indent=1))
        tmp.replace(path)
    print(f"passed: {out['passed']}  total {out['seconds']:.0f}s")


if __name__ == "__main__":
    main()
