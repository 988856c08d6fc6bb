"""2-process DDP vs 1 process with the same global batch, on the natural-text GPT-2 config (CPU, gloo).

    python experiments/natural_text/ddp_compare.py [--steps 60 --batch 16]

Runs ``gpt2_base.yaml`` twice for ``--steps`` steps (no probes): 1 process at batch ``B`` and
2 processes at ``B/2`` each, recording the rank-averaged training loss per step
(``tests.helpers.LossTrace``); prints the largest difference and writes runs/ddp_compare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def run(devices: int, batch: int, steps: int, out: Path) -> tuple[list[float], float]:
    trace = out / f"loss_{devices}.json"
    override = {
        "experiment": f"ddp_compare_{devices}",
        "data": {"init_args": {"batch_size": batch}},
        "trainer": {
            "max_steps": steps, "max_time": None, "val_check_interval": steps, "devices": devices,
            "strategy": "ddp" if devices > 1 else "auto", "logger": False,
            # with no logger, Lightning writes config.yaml and checkpoints under default_root_dir (else into the cwd)
            "default_root_dir": str(out / f"root_{devices}"),
            "callbacks": [{"class_path": "tests.helpers.LossTrace", "init_args": {"out_path": str(trace)}}],
        },
    }
    cfg = out / f"override_{devices}.yaml"
    cfg.write_text(yaml.safe_dump(override))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.time()
    cmd = [sys.executable, "-m", "clamp.cli", "fit", "--config", str(ROOT / "experiments/natural_text/gpt2_base.yaml"), "--config", str(cfg)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return json.loads(trace.read_text()), time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    out = ROOT / "runs" / "ddp_compare"
    out.mkdir(parents=True, exist_ok=True)
    one, t1 = run(1, args.batch, args.steps, out)
    two, t2 = run(2, args.batch // 2, args.steps, out)
    diff = [abs(a - b) for a, b in zip(one, two)]
    result = {"steps": args.steps, "global_batch": args.batch, "max_abs_diff": max(diff), "final_loss": [one[-1], two[-1]],
              "wall_s": [t1, t2], "loss_1proc": one, "loss_2proc": two}
    (out / "ddp_compare.json").write_text(json.dumps(result, indent=2))
    print(f"{args.steps} steps, global batch {args.batch}: max |loss(1 proc) - loss(2 procs)| = {max(diff):.2e}; "
          f"final {one[-1]:.4f} vs {two[-1]:.4f}; wall {t1:.0f} s vs {t2:.0f} s")


if __name__ == "__main__":
    main()
