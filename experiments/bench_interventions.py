"""Benchmark: cost of the interventions engine per training step and per inference forward.

Times AdamW training steps (engine.update + forward + backward + optimizer step, as the
ClampCallback drives them) of a small transformer on bursty-task-shaped inputs (continuous exemplar
features at even positions, label tokens at odd ones, loss at the query) for:

* ``plain``: the model without an engine;
* ``idle``: an engine holding one intervention of every op kind whose schedule has not started;
* one configuration per op kind, active on a typical layer-0 site.

Each configuration has its own copy of the model (same initial weights) and optimizer; the
configurations are timed round-robin for several rounds and the median ms/step is reported, so
slow drifts of a shared machine hit all of them alike.

    python experiments/bench_interventions.py                      # default: the bursty setting, n_ctx 5
    python experiments/bench_interventions.py --n_ctx 64 --batch 64  # longer sequences
    python experiments/bench_interventions.py --large true           # preset: n_ctx 65 (32 pairs + query)
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from clamp.interventions import InterventionEngine
from models import Transformer, TransformerConfig

H0 = "layer0.head0"
CONSTRUCTORS = "clamp.interventions.constructors"


def op_configs(n_heads: int) -> dict[str, list[dict[str, Any]]]:
    """One active intervention per op kind on a typical layer-0 site."""
    return {
        "zero": [{"site": f"{H0}.z", "op": {"kind": "zero"}}],
        "zero (pattern)": [{"site": f"{H0}.pattern", "op": {"kind": "zero"}}],
        "mean": [{"site": f"{H0}.z", "op": {"kind": "mean"}}],
        "mean (running)": [{"site": f"{H0}.z", "op": {"kind": "mean", "over": "running"}}],
        "resample": [{"site": f"{H0}.z", "op": {"kind": "resample"}}],
        "constant": [{"site": f"{H0}.z", "op": {"kind": "constant", "value": 0.5}}],
        "scale": [{"site": f"{H0}.z", "op": {"kind": "scale", "k": 2.0}}],
        "noise": [{"site": f"{H0}.z", "op": {"kind": "noise", "std": 0.1}}],
        "construct": [{"site": f"{H0}.pattern", "op": {"kind": "construct", "fn": "clamp.interventions.constructors.previous_token_pattern"}}],
        "freeze": [{"site": f"{H0}.z", "op": {"kind": "freeze"}}],
        "grad_only": [{"site": f"{H0}.z", "op": {"kind": "grad_only"}}],
        "clamp_to_reference": [{"site": "layer0.head*.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}}],
        "patch": [{"site": "layer0.z", "op": {"kind": "patch", "transform": "resample_batch"}}],
        # the paper's clamps: a batch-aware value, a cross-site differentiable value, a nested second pass
        "construct (batch: induction_pattern)": [
            {"site": "layer1.head0.pattern", "positions": [-1], "op": {"kind": "construct", "fn": f"{CONSTRUCTORS}.induction_pattern"}}
        ],
        "construct (read: perfect_copy, grad)": [
            {"site": "logits", "positions": [-1], "grad": True, "op": {"kind": "construct", "fn": f"{CONSTRUCTORS}.perfect_copy"}}
        ],
        "patch (second pass, nested, grad)": [
            {"site": "layer0.resid_post", "grad": True, "op": {"kind": "construct", "fn": f"{CONSTRUCTORS}.site_value"}},
            {"site": "layer1.pattern", "grad": True, "op": {"kind": "patch", "transform": "identity", "interventions": [
                {"site": "layer0.resid_post", "grad": True, "op": {"kind": "construct", "fn": f"{CONSTRUCTORS}.shifted"}}]}},
        ],
    }


def idle_config(n_heads: int) -> list[dict[str, Any]]:
    """Every op kind, none started yet (replacing ops on distinct heads so they do not conflict)."""
    later = {"start": 10**9}
    replacing = ["zero", "mean", "resample", "constant", "construct", "clamp_to_reference", "patch"]
    ops = {
        "zero": {"kind": "zero"},
        "mean": {"kind": "mean"},
        "resample": {"kind": "resample"},
        "constant": {"kind": "constant", "value": 0.5},
        "construct": {"kind": "construct", "fn": "clamp.interventions.constructors.previous_token_pattern"},
        "clamp_to_reference": {"kind": "clamp_to_reference", "reference": "init"},
        "patch": {"kind": "patch", "transform": "resample_batch"},
        "scale": {"kind": "scale", "k": 2.0},
        "noise": {"kind": "noise", "std": 0.1},
        "freeze": {"kind": "freeze"},
        "grad_only": {"kind": "grad_only"},
    }
    out = []
    for i, (name, op) in enumerate(ops.items()):
        head = replacing.index(name) % n_heads if name in replacing else 0
        layer = 0 if name not in replacing or replacing.index(name) < n_heads else 1
        leaf = "pattern" if name == "construct" else "z"
        out.append({"site": f"layer{layer}.head{head}.{leaf}", "op": op, "schedule": later, "name": f"idle_{i}_{name}"})
    paper = op_configs(n_heads)  # the paper's cross-site and second-pass clamps (their sites overlap none of the above)
    for name in ("construct (read: perfect_copy, grad)", "patch (second pass, nested, grad)"):
        out += [{**spec, "schedule": later, "name": f"idle_{name}_{j}"} for j, spec in enumerate(paper[name])]
    return out


def make_batch(batch: int, n_ctx: int, d_feature: int, n_labels: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, n_labels, (batch, n_ctx), generator=g)
    feature_mask = torch.zeros(batch, n_ctx, dtype=torch.bool)
    feature_mask[:, 0::2] = True  # exemplars at even positions, the query last
    tokens[feature_mask] = n_labels  # placeholder id where features are used
    features = torch.randn(batch, n_ctx, d_feature, generator=g)
    targets = torch.randint(0, n_labels, (batch,), generator=g)
    query_pos = torch.full((batch,), n_ctx - 1)
    match_pos = 2 * torch.randint(0, (n_ctx - 1) // 2, (batch,), generator=g) + 1  # a context label position
    return {"tokens": tokens, "features": features, "feature_mask": feature_mask, "targets": targets, "query_pos": query_pos, "match_pos": match_pos}


class Runner:
    """A model copy, its optimizer and (optionally) an engine, stepped like ClampCallback drives it."""

    def __init__(self, base: Transformer, interventions: list[dict[str, Any]] | None, lr: float = 1e-3) -> None:
        self.model = copy.deepcopy(base)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.engine: InterventionEngine | None = None
        if interventions is not None:
            self.engine = InterventionEngine(self.model, interventions, seed=0)
            self.engine.load_references()
        self.step = 0

    def train_step(self, b: dict[str, torch.Tensor]) -> None:
        if self.engine is not None:
            self.engine.set_batch(b)  # as ClampCallback does (batch-aware values read it)
            self.engine.mode = "train"
            self.engine.update(self.step)
        logits = self.model(b["tokens"], b["features"], b["feature_mask"])
        loss = F.cross_entropy(logits[:, -1], b["targets"])
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1

    def infer(self, b: dict[str, torch.Tensor]) -> None:
        if self.engine is not None:
            self.engine.set_batch(b)
            self.engine.mode = "val"
            self.engine.update(self.step)
        with torch.no_grad():
            self.model(b["tokens"], b["features"], b["feature_mask"])


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) * 1e3 / n


def bench(
    n_layers: int = 2,
    n_heads: int = 8,
    d_model: int = 64,
    attn_only: bool = True,
    batch: int = 128,
    n_ctx: int = 5,
    d_feature: int = 64,
    n_labels: int = 32,
    large: bool = False,
    rounds: int = 9,
    steps: int = 20,
    warmup: int = 5,
    threads: int = 1,
    only: list[str] | None = None,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Time training steps and inference forwards per configuration; print a table.

    Args:
        n_layers: transformer layers.
        n_heads: heads per layer.
        d_model: residual width.
        attn_only: attention-only blocks (the default experiment's setting).
        batch: sequences per batch.
        n_ctx: sequence length (the bursty task with 2 exemplar/label pairs + query: 5).
        d_feature: width of the continuous exemplar inputs.
        n_labels: number of output labels.
        large: preset for long sequences: n_ctx 65 (32 pairs + query), batch 64.
        rounds: round-robin rounds over all configurations (median over rounds is reported).
        steps: timed training steps (and inference forwards) per configuration per round.
        warmup: untimed steps per configuration before the first round.
        threads: torch intra-op threads.
        only: restrict to these configurations (names as in the table; 'plain' is always run).
        seed: weights and data seed.
    """
    if large:
        n_ctx, batch = 65, 64
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = TransformerConfig(n_layers=n_layers, n_heads=n_heads, d_model=d_model, attn_only=attn_only)
    base = Transformer(cfg.resolved(d_vocab=n_labels + 1, n_ctx=n_ctx, d_feature=d_feature, d_out=n_labels))
    b = make_batch(batch, n_ctx, d_feature, n_labels, seed)

    configs: dict[str, list[dict[str, Any]] | None] = {"plain": None, "idle": idle_config(n_heads), **op_configs(n_heads)}
    if only:
        unknown = sorted(set(only) - set(configs))
        if unknown:
            raise ValueError(f"unknown configuration(s) {unknown}; valid: {sorted(configs)}")
        configs = {k: v for k, v in configs.items() if k == "plain" or k in only}
    runners = {name: Runner(base, iv) for name, iv in configs.items()}
    for r in runners.values():
        for _ in range(warmup):
            r.train_step(b)
            r.infer(b)

    train: dict[str, list[float]] = {k: [] for k in runners}
    infer: dict[str, list[float]] = {k: [] for k in runners}
    t_start = time.perf_counter()
    for i in range(rounds):
        order = list(runners) if i % 2 == 0 else list(runners)[::-1]  # alternate direction: no position bias
        for name in order:
            r = runners[name]
            train[name].append(timed(lambda: r.train_step(b), steps))
            infer[name].append(timed(lambda: r.infer(b), steps))
    elapsed = time.perf_counter() - t_start

    med = {k: (statistics.median(train[k]), statistics.median(infer[k])) for k in runners}
    p_train, p_inf = med["plain"]
    print(
        f"model: {n_layers} layers x {n_heads} heads, d_model {d_model}, attn_only={attn_only}; "
        f"batch {batch}, n_ctx {n_ctx}; threads {threads}; {rounds} rounds x {steps} steps (median)"
    )
    w = max(len(k) for k in med) + 2
    print(f"{'config':<{w}} {'train ms/step':>14} {'x plain':>8} {'infer ms/fwd':>13} {'x plain':>8}")
    for k, (tr, inf) in med.items():
        print(f"{k:<{w}} {tr:>14.3f} {tr / p_train:>8.2f} {inf:>13.3f} {inf / p_inf:>8.2f}")
    print(f"(timed section {elapsed:.1f} s)")
    for r in runners.values():
        if r.engine is not None:
            r.engine.detach()
    return med


def main() -> None:
    from jsonargparse import auto_cli

    auto_cli(bench, as_positional=False)


if __name__ == "__main__":
    main()
