"""Training throughput (tokens/s) of the GPT-2-architecture model of experiment 2, with and without head clamps.

    python experiments/natural_text/throughput.py [--steps 5 --rounds 5 --threads 1]

Every condition trains the same model (forward, backward, AdamW step) on the same natural-text
batches; conditions are interleaved round by round so machine load affects them alike, and the
median over rounds is reported. Writes runs/throughput/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import yaml

from clamp.interventions.engine import InterventionEngine
from clamp.text import TextDataModule
from clamp.training import masked_loss_and_accuracy
from models.hf import HFModelConfig

CONDITIONS = {
    "no clamp": [],
    "one head zeroed at z (fused kernel)": [{"site": "layer0.head1.z", "op": {"kind": "zero"}}],
    "layer 0 zeroed at z (all heads)": [{"site": "layer0.head*.z", "op": {"kind": "zero"}}],
    "one head's pattern set (eager layer)": [{"site": "layer1.head0.pattern", "op": {"kind": "construct", "fn": "clamp.interventions.constructors.previous_token_pattern"}}],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="experiments/natural_text/gpt2_base.yaml")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    dm = TextDataModule(**cfg["data"]["init_args"])
    stream = iter(dm.train_stream())
    batches = [next(stream) for _ in range(args.steps)]
    torch.manual_seed(0)
    model = HFModelConfig(**cfg["model"]["hf"]).build(dm.spec.d_vocab, dm.spec.n_ctx).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engines = {name: InterventionEngine(model, spec) for name, spec in CONDITIONS.items()}
    tokens = sum(b["tokens"].numel() for b in batches)

    def run(name: str) -> float:
        engines[name].update(0)
        start = time.perf_counter()
        for b in batches:
            loss, _ = masked_loss_and_accuracy(model(b["tokens"]), b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        elapsed = time.perf_counter() - start
        engines[name].detach()
        return tokens / elapsed

    for name in CONDITIONS:  # warm-up
        run(name)
    rates: dict[str, list[float]] = {name: [] for name in CONDITIONS}
    for _ in range(args.rounds):
        for name in CONDITIONS:
            rates[name].append(run(name))
    base = statistics.median(rates["no clamp"])
    out = {name: {"tokens_per_s_median": statistics.median(r), "rounds": r, "relative": statistics.median(r) / base} for name, r in rates.items()}
    print(f"{'condition':<40} {'tokens/s':>10} {'vs none':>8}")
    for name, r in out.items():
        print(f"{name:<40} {r['tokens_per_s_median']:>10.0f} {r['relative']:>8.2f}")
    dest = Path("runs/throughput/throughput.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"config": args.config, "threads": args.threads, "steps": args.steps, "batch": list(batches[0]["tokens"].shape), "results": out}, indent=2))


if __name__ == "__main__":
    main()
