"""``clamp analyze CKPT``: Singh et al. (2024)'s head analyses of a trained checkpoint, on a fixed eval set.

For the induction layer (default: the last) and the layer below it (the previous-token layer):

* per-head strength: induction strength (query -> correct label minus -> other label) when the
  task has exemplar/label structure, else attention to the copy source;
* remove one head (zero its ``z``), keep one head (zero every other head of the layer);
* the fraction of the strongest head's errors (as the only head kept) that each other head fixes
  when kept together with it;
* heads added back in order of strength (0 = the whole layer ablated);
* path-specific ablations of the layer below: zero its heads' ``z`` (one at a time, then all),
  plainly, with the induction layer's patterns preserved from a clean pass (the ablation acts
  only through values: V-composition), or with its values preserved (acts only through
  queries/keys: Q/K-composition). The clean pass is the engine's ``clamp_to_reference`` with the
  checkpoint itself as reference: the same weights, run without the ablation on the same batch.

Every number is loss and accuracy on the run's own fixed eval split (rebuilt from its
``config.yaml`` and seed). Writes ``analysis.json``, ``analysis.md`` and ``analysis.png``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from clamp.interventions.engine import InterventionEngine, build_reference, load_reference_state
from clamp.interventions.ops import import_callable
from clamp.metrics import heads
from models import Transformer, TransformerConfig
from synthetic_data.base import model_inputs
from synthetic_data.datamodule import SyntheticDataModule


class AnalyzeError(ValueError):
    """A user error (missing file, bad split or layer): one line, no traceback."""


# --------------------------------------------------------------------------- loading


def load_model(ckpt: str | Path) -> Transformer:
    """The transformer of a Lightning checkpoint written by ``clamp fit`` (eval mode, CPU)."""
    try:
        state, hp = load_reference_state(ckpt)
    except (ValueError, FileNotFoundError) as e:  # its wording is for intervention references; here it is the analysed file
        raise AnalyzeError(str(e).replace("reference checkpoint", "checkpoint", 1)
                           + "; `clamp analyze` needs a checkpoint written by `clamp fit` (e.g. <run>/checkpoints/last.ckpt)") from None
    if "transformer" not in hp or "task" not in hp:
        raise AnalyzeError(f"{ckpt}: no transformer/task hyper-parameters; expected a checkpoint written by `clamp fit`")
    task = hp["task"]
    cfg = TransformerConfig(**hp["transformer"]).resolved(
        d_vocab=task.get("d_vocab", 0), n_ctx=task.get("n_ctx", 0), d_feature=task.get("d_feature", 0), d_out=task.get("d_out", 0)
    )
    model = Transformer(cfg)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def _step_folder(ckpt: Path) -> str:
    """``step_<global_step>`` of a Lightning/ensemble checkpoint; the file's stem when it records no step
    (a ``state_dict`` or safetensors file)."""
    if ckpt.suffix == ".safetensors":
        return ckpt.stem
    try:  # weights_only: safe on any file; mmap: the step without reading the tensors
        step = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    except Exception:  # noqa: BLE001 (load_model has already read it; a format without a step keeps the stem)
        return ckpt.stem
    return f"step_{int(step)}" if isinstance(step, int) else ckpt.stem


def _find_config(ckpt: Path) -> Path:
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise AnalyzeError(f"no config.yaml next to {ckpt} or in its run folder; pass --config runs/<exp>/version_N/config.yaml")


def load_eval_batch(config: str | Path, split: str | None = None, size: int | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """``(split, batch)``: the fixed eval set a run was validated on, rebuilt from its ``config.yaml``."""
    cfg = yaml.safe_load(Path(config).read_text())
    data = cfg.get("data") or {}
    if "class_path" in data:  # the DataModule written as class_path/init_args
        if data["class_path"].rsplit(".", 1)[-1] != SyntheticDataModule.__name__:
            raise AnalyzeError(f"{config}: data.class_path={data['class_path']!r}; clamp analyze supports synthetic_data.SyntheticDataModule")
        data = data.get("init_args") or {}
    task_cfg = data.get("task") or {}
    if "class_path" not in task_cfg:
        raise AnalyzeError(f"{config}: data.task has no class_path")
    task = import_callable(task_cfg["class_path"])(**(task_cfg.get("init_args") or {}))
    seed = int(data.get("seed", cfg.get("seed_everything", 0)) or 0)
    dm = SyntheticDataModule(task, eval_size=size or int(data.get("eval_size", 1024)), seed=seed)
    split = split or dm.eval_split_names[0]
    if split not in dm.eval_split_names:
        raise AnalyzeError(f"split={split!r} is not an eval split of this task; valid: {list(dm.eval_split_names)}")
    return split, dm.eval_set(split)


# --------------------------------------------------------------------------- measuring


def _evaluate(
    model: Transformer, batch: Mapping[str, torch.Tensor], interventions: Sequence[Mapping[str, Any]] = (), clean: Mapping[str, torch.nn.Module] | None = None
) -> dict[str, Any]:
    """Loss, accuracy and per-scored-position correctness under ``interventions``.

    ``clean``: reference models already built (``{reference key: model}``), so the checkpoint is
    loaded once rather than once per evaluation."""
    engine = InterventionEngine(model, list(interventions))
    engine.set_batch(batch)  # for batch-aware values
    engine.references.update(clean or {})
    engine.load_references()
    engine.mode = "analysis"
    engine.update(None)
    try:
        with torch.no_grad():
            logits = model(*model_inputs(batch))
    finally:
        engine.detach()
    mask = batch["loss_mask"]
    picked, targets = logits[mask].float(), batch["targets"][mask]
    correct = picked.argmax(-1) == targets
    return {"loss": float(torch.nn.functional.cross_entropy(picked, targets)), "acc": float(correct.float().mean()), "correct": correct}


def _zero(layer: int, heads_: Sequence[int]) -> list[dict[str, Any]]:
    """Zero-ablate the outputs (``z``) of ``heads_`` of ``layer``."""
    return [{"site": f"layer{layer}.head{h}.z", "op": {"kind": "zero"}, "name": f"zero L{layer}H{h}"} for h in heads_]


def _preserve(layer: int, site: str, reference: str) -> list[dict[str, Any]]:
    return [{"site": f"layer{layer}.{site}", "op": {"kind": "clamp_to_reference", "reference": reference}, "name": f"clean {site}"}]


def head_strength(model: Transformer, batch: Mapping[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
    """``(name, [n_layers, n_heads])``: induction strength if the batch supports it, else attention to the copy source."""
    scores = heads.all_head_scores(model, batch)
    for name in ("induction_strength", "induction", "query_to_match"):
        if name in scores:
            return name, scores[name]
    raise AnalyzeError("the eval batch supports no induction measure (needs classes/feature_mask/query_pos or copy_src)")


def analyze(model: Transformer, batch: Mapping[str, torch.Tensor], reference: str = "clean", layer: int | None = None) -> dict[str, Any]:
    """Every analysis of the module docstring as a JSON-ready dict.

    ``reference``: the name under which the clean pass appears in the interventions (the
    checkpoint path from the command line); its model is ``model`` itself, unablated."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    L = n_layers - 1 if layer is None else layer
    if not 1 <= L < n_layers:
        raise AnalyzeError(f"layer={layer} must be in [1, {n_layers - 1}]: the induction layer needs a layer below it")
    P = L - 1
    all_h = list(range(n_heads))
    base = _evaluate(model, batch)
    strength_name, strength = head_strength(model, batch)
    s = strength[L]
    order = sorted(all_h, key=lambda h: -float(s[h]) if math.isfinite(float(s[h])) else math.inf)
    top = order[0]

    def row(res: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        return {**extra, "loss": res["loss"], "acc": res["acc"]}

    remove_one = [row(_evaluate(model, batch, _zero(L, [h])), head=h) for h in all_h]
    keep = {h: _evaluate(model, batch, _zero(L, [g for g in all_h if g != h])) for h in all_h}
    keep_one = [row(keep[h], head=h) for h in all_h]
    errors = ~keep[top]["correct"]
    fixes = []
    for h in all_h:
        if h == top:
            continue
        pair = _evaluate(model, batch, _zero(L, [g for g in all_h if g not in (top, h)]))
        n_err = int(errors.sum())
        fixed = float((pair["correct"] & errors).sum() / n_err) if n_err else float("nan")
        fixes.append({"head": h, "fraction_fixed": fixed, "errors_of_strongest": n_err})
    add_back = [row(_evaluate(model, batch, _zero(L, order[k:])), k=k, heads=order[:k]) for k in range(n_heads + 1)]

    path = []
    clean = {reference: build_reference(model, model.state_dict(), reference)}  # the same weights, run unablated
    for name, hs in [*((f"L{P}H{h}", [h]) for h in all_h), (f"L{P} all", all_h)]:
        ablate = _zero(P, hs)
        path.append({
            "ablated": name,
            "plain": row(_evaluate(model, batch, ablate)),
            "patterns_preserved": row(_evaluate(model, batch, ablate + _preserve(L, "pattern", reference), clean)),
            "values_preserved": row(_evaluate(model, batch, ablate + _preserve(L, "v", reference), clean)),
        })
    grouped = grouped_path_ablations(model, batch, P, L, reference, clean, base)
    return {
        "induction_layer": L,
        "previous_layer": P,
        "n_eval": int(batch["tokens"].shape[0]),
        "base": row(base),
        "strength": {"measure": strength_name, "per_head": [float(x) for x in s], "order": order},
        "remove_one": remove_one,
        "keep_one": keep_one,
        "fix_strongest_errors": {"strongest": top, "per_head": fixes},
        "add_back": add_back,
        "path_ablations": path,
        "grouped_path_ablations": grouped,
    }


PREV_TOKEN_FORMED = 0.5  # a previous-layer head "is a previous-token head" above this label -> exemplar attention


def grouped_path_ablations(model: Transformer, batch: Mapping[str, torch.Tensor], P: int, L: int, reference: str,
                           clean: Mapping[str, Any], base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's grouped form of the path analysis: the previous layer's previous-token heads (label ->
    exemplar attention > PREV_TOKEN_FORMED on this batch, from its real patterns) ablated together, and its
    other heads together, each plainly, with layer L's patterns kept and with its values kept; accuracy
    and loss. One head alone is often redundant (several previous-token heads), so only groups show which
    path a kind of head acts through. Empty when the batch has no ``feature_mask`` (not the exemplar task)."""
    scores = heads.all_head_scores(model, batch)
    if "label_to_exemplar" not in scores:
        return []
    pt = scores["label_to_exemplar"][P]
    prev = [h for h in range(model.cfg.n_heads) if float(pt[h]) > PREV_TOKEN_FORMED]
    other = [h for h in range(model.cfg.n_heads) if h not in prev]
    out = []
    for name, hs in (("previous-token heads", prev), ("other heads", other)):
        if not hs:
            continue
        ablate = _zero(P, hs)

        def measured(extra: list[dict[str, Any]]) -> dict[str, float]:
            res = _evaluate(model, batch, ablate + extra, clean)
            return {"loss": res["loss"], "acc": res["acc"]}

        out.append({
            "group": name, "layer": P, "heads": hs, "scores": [float(pt[h]) for h in hs], "base": {"loss": base["loss"], "acc": base["acc"]},
            "plain": measured([]),
            "patterns_preserved": measured(_preserve(L, "pattern", reference)),
            "values_preserved": measured(_preserve(L, "v", reference)),
        })
    return out


# --------------------------------------------------------------------------- writing


def _f(x: float, digits: int = 3) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.{digits}f}"


def markdown(result: Mapping[str, Any]) -> str:
    """Two tables: per induction-layer head, and the path-specific ablations of the layer below."""
    L, P = result["induction_layer"], result["previous_layer"]
    s = result["strength"]
    fixes = {r["head"]: r["fraction_fixed"] for r in result["fix_strongest_errors"]["per_head"]}
    top = result["fix_strongest_errors"]["strongest"]
    b = result["base"]
    lines = [
        f"Base: loss {_f(b['loss'])}, acc {_f(b['acc'])} on {result['n_eval']} eval sequences. "
        f"Strength = {s['measure']}; strongest head L{L}H{top}.",
        "",
        f"| head | strength | remove-one acc | remove-one loss | keep-one acc | keep-one loss | fixes of L{L}H{top}'s errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for h in s["order"]:
        r, k = result["remove_one"][h], result["keep_one"][h]
        fix = "—" if h == top else _f(fixes[h])
        lines.append(f"| L{L}H{h} | {_f(s['per_head'][h])} | {_f(r['acc'])} | {_f(r['loss'])} | {_f(k['acc'])} | {_f(k['loss'])} | {fix} |")
    lines += ["", "Heads added back in order of strength (the rest of the layer zero-ablated):", "",
              "| heads kept | " + " | ".join(str(r["k"]) for r in result["add_back"]) + " |",
              "|---|" + "---|" * len(result["add_back"]),
              "| acc | " + " | ".join(_f(r["acc"]) for r in result["add_back"]) + " |",
              "| loss | " + " | ".join(_f(r["loss"]) for r in result["add_back"]) + " |",
              "", f"Layer-{P} heads zero-ablated, plainly or with layer {L}'s patterns / values from a clean pass (accuracy, loss):", "",
              "| ablated | plain | patterns preserved | values preserved |", "|---|---|---|---|"]
    for r in result["path_ablations"]:
        cells = [f"{_f(r[k]['acc'])} / {_f(r[k]['loss'])}" for k in ("plain", "patterns_preserved", "values_preserved")]
        lines.append(f"| {r['ablated']} | " + " | ".join(cells) + " |")
    if result.get("grouped_path_ablations"):
        lines += ["", f"Grouped (the paper's form): layer-{P} heads with label -> exemplar attention > {PREV_TOKEN_FORMED} ablated together, "
                  "and the other heads together (accuracy, loss):", "",
                  "| group | heads | plain | patterns preserved | values preserved |", "|---|---|---|---|---|"]
        for r in result["grouped_path_ablations"]:
            cells = [f"{_f(r[k]['acc'])} / {_f(r[k]['loss'])}" for k in ("plain", "patterns_preserved", "values_preserved")]
            lines.append(f"| {r['group']} | " + ", ".join(f"L{P}H{h}" for h in r["heads"]) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(result: Mapping[str, Any], path: Path) -> None:
    """Four panels: strength, remove/keep-one accuracy, add-back curve, path ablations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, P = result["induction_layer"], result["previous_layer"]
    n = len(result["remove_one"])
    x = list(range(n))
    fig, ax = plt.subplots(1, 4, figsize=(18, 3.8))
    ax[0].bar(x, result["strength"]["per_head"], color="tab:purple")
    ax[0].set(title=f"L{L} {result['strength']['measure']}", xlabel="head", xticks=x)
    ax[0].axhline(0, color="k", lw=0.5)
    w = 0.4
    ax[1].bar([i - w / 2 for i in x], [r["acc"] for r in result["remove_one"]], w, label="remove one")
    ax[1].bar([i + w / 2 for i in x], [r["acc"] for r in result["keep_one"]], w, label="keep one")
    ax[1].axhline(result["base"]["acc"], color="k", ls="--", lw=1, label="all heads")
    ax[1].set(title=f"L{L} heads: accuracy", xlabel="head", xticks=x, ylim=(0, 1.02))
    ax[1].legend(fontsize=8, loc="lower left", framealpha=0.9)
    k = [r["k"] for r in result["add_back"]]
    ax[2].plot(k, [r["loss"] for r in result["add_back"]], "o-", color="tab:red")
    labels = ["none"] + [f"+H{h}" for h in result["strength"]["order"]]
    ax[2].set(title="heads added back by strength", xlabel="heads kept", ylabel="loss", xticks=k)
    ax[2].set_xticklabels(labels, fontsize=8)
    rows = result["path_ablations"]
    y = list(range(len(rows)))
    for j, (key, label) in enumerate((("plain", "ablated"), ("patterns_preserved", f"L{L} patterns kept"), ("values_preserved", f"L{L} values kept"))):
        ax[3].barh([i + (j - 1) * 0.27 for i in y], [r[key]["loss"] for r in rows], 0.27, label=label)
    ax[3].axvline(result["base"]["loss"], color="k", ls="--", lw=1)
    ax[3].set(title=f"L{P} path ablations: loss", yticks=y, yticklabels=[r["ablated"] for r in rows])
    ax[3].invert_yaxis()
    ax[3].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyze_checkpoint(ckpt: str, config: str | None = None, split: str | None = None, eval_size: int | None = None,
                       layer: int | None = None, out: str | None = None) -> Path:
    """Analyse ``ckpt`` and write ``analysis.{json,md,png}``.

    Args:
        ckpt: checkpoint written by ``clamp fit`` (e.g. ``runs/<exp>/version_0/checkpoints/last.ckpt``).
        config: the run's ``config.yaml`` (default: found next to the checkpoint's folder).
        split: eval split to analyse on (default: the task's main split, e.g. ``ic``).
        eval_size: sequences (default: the run's ``data.eval_size``, the same fixed set as validation).
        layer: the induction layer (default: the last); the layer below it gets the path ablations.
        out: output folder (default: ``<run>/analysis/step_<N>``, N the checkpoint's optimizer steps, the
            step of the logged curves; ``last.ckpt`` moves on, a step does not).
    """
    start = time.perf_counter()
    path = Path(ckpt)
    if not path.is_file():
        raise AnalyzeError(f"checkpoint {ckpt!r} does not exist")
    config_path = Path(config) if config else _find_config(path)
    threads = int(yaml.safe_load(config_path.read_text()).get("torch_threads") or 0)
    if threads:
        torch.set_num_threads(threads)  # as the run was trained: tiny models are fastest on one thread
    model = load_model(path)
    split, batch = load_eval_batch(config_path, split, eval_size)
    result = analyze(model, batch, str(path), layer)
    result.update(checkpoint=str(path), split=split, seconds=time.perf_counter() - start)
    out_dir = Path(out) if out else config_path.parent / "analysis" / _step_folder(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2))
    (out_dir / "analysis.md").write_text(f"# clamp analyze {path} (split {split})\n\n" + markdown(result))
    figure(result, out_dir / "analysis.png")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """``clamp analyze CKPT [--split S] [--eval_size N] [--layer L] [--out DIR] [--config run.yaml]``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="clamp analyze", description=(__doc__ or "").split("\n")[0])
    parser.add_function_arguments(analyze_checkpoint, as_group=False)
    parser.add_argument("--debug", action="store_true", help="Show tracebacks.")
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):  # positional checkpoint
        args = ["--ckpt", args[0], *args[1:]]
    cfg = parser.parse_args(args)
    kwargs = {k: cfg[k] for k in ("ckpt", "config", "split", "eval_size", "layer", "out")}
    start = time.perf_counter()
    try:
        out_dir = analyze_checkpoint(**kwargs)
    except (AnalyzeError, OSError, KeyError) as err:  # OSError: e.g. a read-only run folder for the output
        if cfg.debug:
            raise
        what = str(err.args[0] if isinstance(err, (AnalyzeError, KeyError)) and err.args else err)
        print(f"clamp analyze: error: {what} (--debug for the traceback)", file=sys.stderr)
        sys.exit(2)
    print((out_dir / "analysis.md").read_text())
    print(f"analysis written to {out_dir} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
