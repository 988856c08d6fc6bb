"""Singh et al. (2024)'s toy model of interacting subcircuits: why clamps remove the plateau.

The loss of a rank-1 three-factor product,

    L(a, b, c) = 1/2 * mean_ijk (a*_i b*_j c*_k - a_i b_j c_k)^2,     a, b, c in R^dim,

trained by plain gradient descent (lr 1, 1000 steps, dim 20, targets and init ~ N(0, 1)), shows
a plateau followed by an abrupt drop when all three factors must be learned together; clamping c
to its target (c := c* after every step) shortens the plateau, and clamping b and c leaves a
quadratic problem in a whose loss falls smoothly from the start: the same signature as the
paper's clamps on the transformer (Fig. 5). Seconds on CPU.

    python experiments/singh2024/toy_model.py --out reports/singh2024_toy

writes ``toy_model.png`` (loss curves) and ``toy_model.json`` (curves and steps to reach 50% / 1%
of the initial loss per condition), and prints the summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CONDITIONS = {"nothing clamped": (), "c clamped": ("c",), "b, c clamped": ("b", "c")}


def train(clamped: tuple[str, ...], dim: int = 20, steps: int = 1000, lr: float = 1.0, seed: int = 1) -> list[float]:
    """Loss at every step of gradient descent with ``clamped`` factors reset to their targets after each step."""
    g = torch.Generator().manual_seed(seed)
    true = {k: torch.randn(dim, generator=g, dtype=torch.float64) for k in "abc"}
    params = {k: torch.randn(dim, generator=g, dtype=torch.float64) for k in "abc"}
    target = torch.einsum("i,j,k->ijk", true["a"], true["b"], true["c"])
    losses = []
    for _ in range(steps):
        for k in clamped:
            params[k] = true[k].clone()
        p = {k: v.detach().requires_grad_(k not in clamped) for k, v in params.items()}
        loss = 0.5 * (target - torch.einsum("i,j,k->ijk", p["a"], p["b"], p["c"])).pow(2).mean()
        losses.append(float(loss.detach()))
        grads = torch.autograd.grad(loss, [p[k] for k in "abc" if k not in clamped])
        free = [k for k in "abc" if k not in clamped]
        params = {k: (p[k] - lr * grads[free.index(k)]).detach() if k in free else p[k].detach() for k in "abc"}
    return losses


def steps_to(losses: list[float], fraction: float) -> int | None:
    """First step whose loss is below ``fraction`` of the initial loss (None: never)."""
    return next((i for i, v in enumerate(losses) if v < fraction * losses[0]), None)


def run(out: str = "reports/singh2024_toy", dim: int = 20, steps: int = 1000, lr: float = 1.0, seed: int = 1) -> dict:
    """Train every condition, write the figure and the JSON, return the summary.

    Args:
        out: output folder.
        dim: length of each factor (the paper: 20).
        steps: gradient-descent steps (the paper: 1000).
        lr: learning rate (the paper: 1).
        seed: seeds targets and initialisation (the paper's script: 1).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: train(c, dim, steps, lr, seed) for name, c in CONDITIONS.items()}
    summary = {
        name: {"initial_loss": v[0], "final_loss": v[-1], "steps_to_50pct": steps_to(v, 0.5), "steps_to_1pct": steps_to(v, 0.01)}
        for name, v in curves.items()
    }
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, v in curves.items():
        for a in ax:
            a.plot([x / v[0] for x in v], label=name)
    done = [s["steps_to_1pct"] for s in summary.values() if s["steps_to_1pct"] is not None]
    ax[0].set(title=f"toy model: dim {dim}, GD lr {lr}", xlabel="step", ylabel="loss / initial loss", xlim=(0, min(steps, int(1.5 * max(done, default=steps)))))
    ax[1].set(title="log scale", xlabel="step", yscale="log")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(folder / "toy_model.png", dpi=120)
    plt.close(fig)
    (folder / "toy_model.json").write_text(json.dumps({"config": {"dim": dim, "steps": steps, "lr": lr, "seed": seed}, "summary": summary, "curves": curves}))
    return summary


if __name__ == "__main__":
    from jsonargparse import CLI

    result = CLI(run, as_positional=False)
    for name, s in result.items():
        print(f"{name:16s} loss {s['initial_loss']:.3f} -> {s['final_loss']:.2e}; 50% at step {s['steps_to_50pct']}, 1% at step {s['steps_to_1pct']}")
