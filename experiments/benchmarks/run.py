"""End-to-end benchmark: clamp against a plain PyTorch loop, TransformerLens and pyvene, and ensembles.

Everything is measured in this one run, side by side, with one torch thread (tiny models run
fastest that way, and ratios from different runs of a shared machine are not comparable):

1. ``clamp fit`` of the default experiment (with and without the emergence callback) against a
   minimal hand-written PyTorch loop doing the same training (model, data stream, AdamW, warmup,
   gradient clipping) and the same validation cadence on the same eval sets;
2. per training step: clamp idle / head ablation / clamp-to-reference against a plain step, and
   the same head ablation through TransformerLens hooks and through pyvene (optional
   dependencies: ``pip install transformer_lens pyvene``), all on token inputs of the default shape;
3. ``clamp sweep --ensemble``'s loop: an ensemble of N seeds against N sequential ``clamp fit`` runs;
4. peak memory of training (resident set of a fresh process, peak counter reset after set-up) with
   and without a reference model.

    python experiments/benchmarks/run.py                 # writes experiments/benchmarks/RESULTS.md
    python experiments/benchmarks/run.py --quick true    # a smoke run (a few steps of everything)
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "experiments" / "induction_default.yaml"
OUT = Path(__file__).resolve().parent / "RESULTS.md"

TARGETS = {  # issue 12
    "fit_vs_plain": ("clamp fit without emergence / plain loop", 1.15),
    "emergence": ("clamp fit with emergence / without", 1.15),
    "ablation": ("head ablation step / plain step", 1.05),
    "reference": ("clamp-to-reference step / plain step", 1.3),
    "ens8": ("ensemble of 8 / one run (wall time)", 2.0),
    "ens16": ("ensemble of 16 / one run (wall time)", 3.0),
}


# ---------------------------------------------------------------------------------- configs
def default_config() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT.read_text())


def fit_config(steps: int, emergence: bool, save_dir: str, **data: Any) -> dict[str, Any]:
    """The default experiment, shortened to ``steps``, logging under ``save_dir``, optionally without emergence."""
    cfg = default_config()
    cfg["trainer"]["max_steps"] = steps
    cfg["trainer"]["enable_progress_bar"] = False
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": save_dir, "name": "bench", "default_hp_metric": False}}
    if not emergence:
        cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"] if not c["class_path"].endswith("EmergenceCallback")]
    cfg["data"].update(data)
    return cfg


def time_clamp_fit(cfg: dict[str, Any], tmp: Path) -> float:
    from clamp.cli import cli_main

    path = tmp / f"fit_{time.time_ns()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    cli_main(["fit", "--config", str(path)])
    return time.perf_counter() - t0


EMERGENCE_PARTS = {  # what the emergence callback's time is spent on: (where, function) -> label
    ("clamp.metrics.callback", "EmergenceCallback._probe"): "probes (all of it)",
    ("clamp.metrics.callback", "EmergenceCallback.measure"): "  forwards and scores",
    ("clamp.metrics.callback", "ablation_importance"): "    causal importance",
    ("clamp.metrics.callback", "EmergenceCallback._log_heatmaps"): "  heatmaps",
    ("clamp.metrics.callback", "log_scalars"): "  TensorBoard scalars",
    ("clamp.metrics.callback", "EmergenceCallback.summarize"): "phase detection and summary at the end",
    ("clamp.metrics.callback", "EmergenceCallback.state_dict"): "its checkpoint state",
}


def emergence_breakdown(steps: int, tmp: Path) -> dict[str, float]:
    """Seconds spent in each part of the emergence callback during one default ``clamp fit`` (timers
    wrapped around the functions of :data:`EMERGENCE_PARTS`; the rest is Lightning's own handling)."""
    import functools
    import importlib

    spent = dict.fromkeys(EMERGENCE_PARTS.values(), 0.0)
    originals = []
    for (module_name, qualname), label in EMERGENCE_PARTS.items():
        owner = importlib.import_module(module_name)
        *path, name = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        fn = getattr(owner, name)

        def timed(*args: Any, _fn: Callable = fn, _label: str = label, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kw)
            finally:
                spent[_label] += time.perf_counter() - t0

        setattr(owner, name, functools.wraps(fn)(timed))
        originals.append((owner, name, fn))
    try:
        spent["(the whole run)"] = time_clamp_fit(fit_config(steps, True, str(tmp / "runs")), tmp)
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    return spent


# ---------------------------------------------------------------------------------- the plain loop
def plain_loop(cfg: dict[str, Any], device: str = "cpu") -> float:
    """What a researcher would write by hand: the same model, data, optimizer, clipping and validation cadence
    (on ``device``: batches are sampled on the CPU, as the data module does, and copied there)."""
    from models import Transformer, TransformerConfig
    from synthetic_data import BurstyClassification
    from synthetic_data.base import batch_rng

    t0 = time.perf_counter()
    seed, data, trainer, opt_cfg = cfg["seed_everything"], cfg["data"], cfg["trainer"], cfg["model"]["optimizer"]
    torch.manual_seed(seed)
    task = BurstyClassification(**data["task"]["init_args"])
    task.setup(seed)
    spec = task.spec
    model = Transformer(TransformerConfig(**cfg["model"]["transformer"]).resolved(d_vocab=spec.d_vocab, n_ctx=spec.n_ctx, d_feature=spec.d_feature, d_out=spec.d_out)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=opt_cfg["lr"])
    warmup = opt_cfg["warmup_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    evals = {name: _to(task.sample(batch_rng(seed, 1 + i, 0), data["eval_size"], name), device) for i, name in enumerate(task.eval_splits)}
    ebs = data.get("eval_batch_size", 512)

    def loss_acc(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["tokens"], batch["features"], batch["feature_mask"])[:, -1]
        target = batch["targets"][:, -1]
        return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()

    history = []
    for step in range(trainer["max_steps"]):
        batch = _to(task.sample(batch_rng(seed, 0, step), data["batch_size"], "train"), device)
        loss, _ = loss_acc(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer["gradient_clip_val"])
        opt.step()
        sched.step()
        if (step + 1) % trainer["log_every_n_steps"] == 0:
            history.append(float(loss.detach()))
        if (step + 1) % trainer["val_check_interval"] == 0:
            model.eval()
            with torch.no_grad():
                for ev in evals.values():
                    [loss_acc({k: v[i : i + ebs] for k, v in ev.items()}) for i in range(0, len(ev["tokens"]), ebs)]
            model.train()
    return time.perf_counter() - t0


def _to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ---------------------------------------------------------------------------------- per-step comparisons
def _token_batch(batch: int, n_ctx: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (batch, n_ctx), generator=g), torch.randint(0, vocab - 1, (batch,), generator=g)


def step_timings(rounds: int, steps: int) -> dict[str, float | None]:
    """Median ms per training step of each configuration, timed round-robin (drifts hit all alike)."""
    from clamp.interventions import InterventionEngine
    from models import Transformer, TransformerConfig

    mc = default_config()["model"]["transformer"]
    batch, n_ctx, vocab = 128, 5, 33
    tokens, targets = _token_batch(batch, n_ctx, vocab)
    torch.manual_seed(0)
    base = Transformer(TransformerConfig(**mc).resolved(d_vocab=vocab, n_ctx=n_ctx, d_out=vocab - 1))
    steppers: dict[str, Callable[[], None]] = {}

    def clamp_stepper(interventions: list[dict[str, Any]] | None, scale: int = 1) -> Callable[[], None]:
        model = copy.deepcopy(base)
        toks, tgts = (tokens, targets) if scale == 1 else (tokens.repeat(scale, 1), targets.repeat(scale))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        engine = InterventionEngine(model, interventions, seed=0) if interventions is not None else None
        if engine is not None:
            engine.load_references()
        state = {"step": 0}

        def step() -> None:
            if engine is not None:
                engine.mode = "train"
                engine.update(state["step"])
            loss = F.cross_entropy(model(toks)[:, -1], tgts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1

        return step

    steppers["clamp plain"] = clamp_stepper(None)
    steppers["clamp idle engine"] = clamp_stepper([{"site": "layer0.head1.z", "op": {"kind": "zero"}, "schedule": {"start": 10**9}}])
    steppers["clamp head ablation"] = clamp_stepper([{"site": "layer0.head1.z", "op": {"kind": "zero"}}])
    steppers["clamp clamp_to_reference"] = clamp_stepper([{"site": "layer0.head*.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}}])
    for n in (8, 16):  # one model doing an n-member ensemble's arithmetic: the floor for that ensemble's step
        steppers[f"clamp plain, batch x{n}"] = clamp_stepper(None, scale=n)
    unavailable: dict[str, str] = {}
    try:
        steppers.update(_lens_steppers(mc, batch, n_ctx, vocab, tokens, targets))
    except ImportError as e:
        unavailable["TransformerLens / pyvene"] = str(e)
    for fn in steppers.values():  # warm-up
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for r in range(rounds):
        for name in list(steppers) if r % 2 == 0 else list(steppers)[::-1]:
            t0 = time.perf_counter()
            for _ in range(steps):
                steppers[name]()
            times[name].append((time.perf_counter() - t0) * 1e3 / steps)
    out: dict[str, Any] = {k: statistics.median(v) for k, v in times.items()}
    out["_unavailable"] = unavailable
    return out


def _lens_steppers(mc: dict[str, Any], batch: int, n_ctx: int, vocab: int, tokens: torch.Tensor, targets: torch.Tensor) -> dict[str, Callable[[], None]]:
    """The same model and head ablation (zero L0H1's z) in TransformerLens (hooks) and pyvene (on the TL model)."""
    import transformer_lens as tl

    cfg = tl.HookedTransformerConfig(
        n_layers=mc["n_layers"], d_model=mc["d_model"], n_heads=mc["n_heads"], d_head=mc["d_model"] // mc["n_heads"], n_ctx=n_ctx,
        d_vocab=vocab, d_vocab_out=vocab - 1, attn_only=True, normalization_type="LN", positional_embedding_type="standard", seed=0, device="cpu",
    )

    def zero_head(z: torch.Tensor, hook: Any) -> torch.Tensor:  # z: [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    def make(kind: str) -> Callable[[], None]:
        model = tl.HookedTransformer(cfg)
        run: Callable[[], torch.Tensor]
        if kind == "pyvene":
            import pyvene as pv

            class ZeroHead(pv.SourcelessIntervention):
                def __init__(self, **kw: Any) -> None:
                    super().__init__(**kw, keep_last_dim=True)

                def forward(self, base: torch.Tensor, source: Any = None, subspaces: Any = None) -> torch.Tensor:
                    mask = torch.ones(base.shape[2], 1, dtype=base.dtype)
                    mask[1] = 0.0
                    return base * mask

            model.config = model.cfg  # pyvene reads `model.config`
            pvm = pv.IntervenableModel({"component": "blocks[0].attn.hook_z.output", "intervention": ZeroHead()}, model=model)
            pvm.enable_model_gradients()
            run = lambda: pvm(base={"input": tokens})[1]  # noqa: E731
        elif kind == "hooks":
            model.add_hook("blocks.0.attn.hook_z", zero_head)
            run = lambda: model(tokens)  # noqa: E731
        else:
            run = lambda: model(tokens)  # noqa: E731
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step() -> None:
            loss = F.cross_entropy(run()[:, -1], targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    return {"TransformerLens plain": make("plain"), "TransformerLens head ablation (hooks)": make("hooks"), "pyvene head ablation (on the TL model)": make("pyvene")}


# ---------------------------------------------------------------------------------- ensembles
def ensemble_timings(sizes: list[int], steps: int, tmp: Path, emergence: bool) -> dict[str, float]:
    """Wall time of one ``clamp fit`` run and of ensembles of N seeds, through the sweep's own code paths."""
    from clamp.ensemble.runner import train_ensemble
    from clamp.sweep import load_sweep

    base = fit_config(steps, emergence, str(tmp / "unused"))
    base_path = tmp / "ens_base.yaml"
    base_path.write_text(yaml.safe_dump(base))
    out: dict[str, float] = {}
    seq_path = tmp / "seq.yaml"
    seq_path.write_text(yaml.safe_dump({"experiment": "one", "base": str(base_path), "seeds": 1}))
    run = load_sweep(seq_path, str(tmp / f"one_{time.time_ns()}"))[0]
    run.write_config()
    from clamp.cli import cli_main

    t0 = time.perf_counter()
    cli_main(run.fit_args())
    out["one run"] = time.perf_counter() - t0
    cores = os.cpu_count() or 1
    wide_path = tmp / "ens_base_wide.yaml"  # the same runs with every core: a batched ensemble is big enough for threads to pay
    wide_path.write_text(yaml.safe_dump({**base, "torch_threads": cores}))
    plans = [(n, base_path, f"ensemble of {n}") for n in sizes]
    plans += [(n, wide_path, f"ensemble of {n}, {cores} threads") for n in sizes if n >= 4 and cores > 1]
    for n, path, name in plans:
        sweep = tmp / f"ens{n}.yaml"
        sweep.write_text(yaml.safe_dump({"experiment": f"ens{n}", "base": str(path), "seeds": n}))
        runs = load_sweep(sweep, str(tmp / f"ens_{time.time_ns()}"))
        for r in runs:
            r.write_config()
        t0 = time.perf_counter()
        train_ensemble(runs)
        out[name] = time.perf_counter() - t0
        torch.set_num_threads(1)  # building the members set the config's thread count
    return out


# ---------------------------------------------------------------------------------- memory
LARGE = {"n_context": 32, "d_model": 256, "batch_size": 256}  # a setting where activations, not imports, dominate memory


def memory_child(reference: bool, steps: int, large: bool = False) -> None:
    """Train ``steps`` of the default model (or ``LARGE``), with or without clamping every pattern to a
    reference model, and print the peak RSS in MiB before and after training."""
    from clamp.interventions import InterventionEngine
    from models import Transformer, TransformerConfig
    from synthetic_data import BurstyClassification
    from synthetic_data.base import batch_rng

    torch.set_num_threads(1)
    cfg = default_config()
    if large:
        cfg["data"]["task"]["init_args"]["n_context"] = LARGE["n_context"]
        cfg["model"]["transformer"]["d_model"] = LARGE["d_model"]
        cfg["data"]["batch_size"] = LARGE["batch_size"]
    task = BurstyClassification(**cfg["data"]["task"]["init_args"])
    task.setup(0)
    s = task.spec
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**cfg["model"]["transformer"]).resolved(d_vocab=s.d_vocab, n_ctx=s.n_ctx, d_feature=s.d_feature, d_out=s.d_out))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ivs = [{"site": "layer*.head*.pattern", "op": {"kind": "clamp_to_reference", "reference": "init"}}] if reference else []
    engine = InterventionEngine(model, ivs, seed=0)
    engine.load_references()
    before = _proc_status_mib("VmRSS")
    reset = _reset_peak_rss()  # imports peak above training: measure the peak of training alone
    for step in range(steps):
        engine.update(step)
        b = task.sample(batch_rng(0, 0, step), cfg["data"]["batch_size"], "train")
        loss = F.cross_entropy(model(b["tokens"], b["features"], b["feature_mask"])[:, -1], b["targets"][:, -1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    peak = _proc_status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "before_training_mib": before, "peak_reset": reset}))


def _proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (``VmRSS``: resident now, ``VmHWM``: its peak), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux: ``5`` to /proc/self/clear_refs);
    False where that is not possible (then the peak includes the imports)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory(steps: int) -> dict[str, dict[str, float]]:
    out = {}
    for large in (False, True):
        for ref in (False, True):
            code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r}); import run; run.memory_child({ref}, {steps}, {large})"
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
            name = f"{'large' if large else 'default'} model, {'with' if ref else 'without'} reference"
            out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------------------------- overhead-bound regime (issue 22)
#: the tiny settings of issue 22: arithmetic is negligible, per-step overhead is what the time is
TINY = {"1 layer x 1 head": {"n_layers": 1, "n_heads": 1, "d_model": 16}, "2 layers x 2 heads": {"n_layers": 2, "n_heads": 2, "d_model": 16}}
TINY_BATCH = 8
DEVICES = ("cpu", "cuda")


def check_device(device: str) -> str:
    """``device`` if it is one this benchmark runs on (an unusable one fails here, not minutes into a run)."""
    if device not in DEVICES:
        raise ValueError(f"--device {device!r}; valid devices: {list(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    return device


def on_device(cfg: dict[str, Any], device: str, precision: str | None = None, compile: str | None = None) -> dict[str, Any]:
    """``cfg`` trained on ``device`` (Lightning's accelerator), optionally at ``precision`` and compiled."""
    cfg = copy.deepcopy(cfg)
    cfg["trainer"]["accelerator"] = "gpu" if device == "cuda" else "cpu"
    if precision is not None:
        cfg["trainer"]["precision"] = precision
    if compile is not None:
        cfg["model"]["compile"] = compile
    return cfg


def tiny_config(steps: int, setting: str, save_dir: str, device: str = "cpu") -> dict[str, Any]:
    """The default experiment (no emergence) with a tiny model of :data:`TINY` at batch :data:`TINY_BATCH`."""
    cfg = fit_config(steps, False, save_dir, batch_size=TINY_BATCH)
    cfg["model"]["transformer"].update(TINY[setting])
    return on_device(cfg, device)


def bare_lightning(cfg: dict[str, Any]) -> float:
    """Seconds of a minimal LightningModule on ``cfg``'s model, data module and validation cadence, with no
    logger, no checkpoints and no callbacks: what Lightning itself costs, against which clamp's own cost is read."""
    import lightning as L

    from clamp.training import masked_loss_and_accuracy
    from models import Transformer, TransformerConfig
    from synthetic_data import BurstyClassification, SyntheticDataModule
    from synthetic_data.base import model_inputs

    t0 = time.perf_counter()
    data, tr, opt_cfg = cfg["data"], cfg["trainer"], cfg["model"]["optimizer"]
    L.seed_everything(cfg["seed_everything"], verbose=False)
    dm = SyntheticDataModule(BurstyClassification(**data["task"]["init_args"]), batch_size=data["batch_size"], eval_size=data["eval_size"], seed=cfg["seed_everything"])
    s = dm.spec
    model = Transformer(TransformerConfig(**cfg["model"]["transformer"]).resolved(d_vocab=s.d_vocab, n_ctx=s.n_ctx, d_feature=s.d_feature, d_out=s.d_out))

    class Bare(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: dict[str, torch.Tensor], idx: int) -> torch.Tensor:
            return masked_loss_and_accuracy(self.model(*model_inputs(batch)), batch)[0]

        def validation_step(self, batch: dict[str, torch.Tensor], idx: int, dataloader_idx: int = 0) -> None:
            masked_loss_and_accuracy(self.model(*model_inputs(batch)), batch)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=opt_cfg["lr"])

    trainer = L.Trainer(
        max_steps=tr["max_steps"], val_check_interval=tr["val_check_interval"], check_val_every_n_epoch=None, gradient_clip_val=tr["gradient_clip_val"],
        accelerator=tr["accelerator"], devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Bare(), datamodule=dm)
    return time.perf_counter() - t0


def overhead_timings(steps: int, repeats: int, tmp: Path, device: str = "cpu") -> dict[str, dict[str, float]]:
    """Per setting of :data:`TINY`: ms per step of the plain loop, bare Lightning and ``clamp fit``, each net
    of its fixed start-up (the same run with 0 steps), median of ``repeats`` interleaved repeats."""
    runners: dict[str, Callable[[dict[str, Any]], float]] = {
        "plain loop": lambda c: plain_loop(c, device),
        "bare Lightning": bare_lightning,
        "clamp fit (no emergence)": lambda c: time_clamp_fit(c, tmp),
    }
    out: dict[str, dict[str, float]] = {}
    for setting in TINY:
        per: dict[str, list[float]] = {k: [] for k in runners}
        for r in range(repeats):
            for name in list(runners) if r % 2 == 0 else list(runners)[::-1]:
                full = runners[name](tiny_config(steps, setting, str(tmp / "runs"), device))
                zero = runners[name](tiny_config(0, setting, str(tmp / "runs"), device))
                per[name].append((full - zero) * 1e3 / steps)
        out[setting] = {k: statistics.median(v) for k, v in per.items()}
        print(f"[overhead] {setting}: {out[setting]}", flush=True)
    return out


def _ensemble_runs(cfg: dict[str, Any], n: int, tmp: Path) -> list[Any]:
    from clamp.sweep import load_sweep

    base = tmp / f"ens_base_{time.time_ns()}.yaml"
    base.write_text(yaml.safe_dump(cfg))
    sweep = tmp / f"ens{n}_{time.time_ns()}.yaml"
    sweep.write_text(yaml.safe_dump({"experiment": f"ens{n}", "base": str(base), "seeds": n}))
    runs = load_sweep(sweep, str(tmp / f"ens_{time.time_ns()}"))
    for r in runs:
        r.write_config()
    return runs


def time_ensemble(cfg: dict[str, Any], n: int, tmp: Path) -> float:
    """Wall seconds of ``clamp sweep --ensemble``'s loop over ``n`` seeds of ``cfg`` (``n`` = 1: one ``clamp fit``)."""
    from clamp.cli import cli_main
    from clamp.ensemble.runner import train_ensemble

    runs = _ensemble_runs(cfg, n, tmp)
    t0 = time.perf_counter()
    if n == 1:
        cli_main(runs[0].fit_args())
    else:
        train_ensemble(runs)
    elapsed = time.perf_counter() - t0
    torch.set_num_threads(1)  # building the members set the config's thread count
    return elapsed


def ensemble_net(make: Callable[[int], dict[str, Any]], sizes: list[int], steps: int, tmp: Path) -> dict[str, dict[str, float]]:
    """Per ensemble size (1 = one ``clamp fit``): wall seconds of ``steps`` and of 1 step (the ensemble loop
    refuses 0 steps), and the net: what ``steps - 1`` steps cost once start-up is paid."""
    out: dict[str, dict[str, float]] = {}
    for n in sizes:
        full, zero = time_ensemble(make(steps), n, tmp), time_ensemble(make(1), n, tmp)
        out[str(n)] = {"wall_s": full, "startup_s": zero, "net_s": full - zero}
        print(f"[ensemble net] {n}: {out[str(n)]}", flush=True)
    return out


def tiny_ensembles(sizes: list[int], steps: int, tmp: Path, device: str = "cpu") -> dict[str, dict[str, float]]:
    """:func:`ensemble_net` of the tiny 2 layers x 2 heads model: one run and ensembles of ``sizes`` sampling
    in the training process, then the same ensembles with ``data.num_workers: 1`` (key ``"<n>+worker"``):
    one lockstep worker samples every member's batches beside the training process."""

    def make(steps: int, workers: int = 0) -> dict[str, Any]:
        cfg = tiny_config(steps, "2 layers x 2 heads", str(tmp / "unused"), device)
        cfg["data"]["num_workers"] = workers
        return cfg

    out = ensemble_net(make, [1, *sizes], steps, tmp)
    out.update({f"{n}+worker": v for n, v in ensemble_net(lambda s: make(s, 1), sizes, steps, tmp).items()})
    return out


def gpu_timings(device: str, steps: int, ensemble_steps: int, sizes: list[int], tmp: Path, compile_backend: str = "inductor") -> dict[str, Any]:
    """The GPU section (issue 22.3), on ``device``: default fit against the plain loop, the emergence callback's
    overhead, ``bf16-mixed`` and ``model.compile``, and ensembles of default-size models in sequences per second."""
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}
    fits: dict[str, dict[str, Any]] = {
        "plain loop": {},
        "clamp fit (no emergence)": {"emergence": False},
        "clamp fit (default, with emergence)": {"emergence": True},
        "clamp fit (no emergence), bf16-mixed": {"emergence": False, "precision": "bf16-mixed"},
        f"clamp fit (no emergence), model.compile ({compile_backend})": {"emergence": False, "compile": compile_backend},
    }
    res["fit"] = {}
    for name, kw in fits.items():
        cfg = on_device(fit_config(steps, kw.get("emergence", False), str(tmp / "runs")), device, kw.get("precision"), kw.get("compile"))
        res["fit"][name] = plain_loop(cfg, device) if name == "plain loop" else time_clamp_fit(cfg, tmp)
        print(f"[{device} fit] {name}: {res['fit'][name]:.1f} s", flush=True)
    seqs = (ensemble_steps - 1) * int(default_config()["data"]["batch_size"])  # net of a 1-step run (ensemble_net)
    ens = ensemble_net(lambda s: on_device(fit_config(s, False, str(tmp / "unused")), device), [1, *sizes], ensemble_steps, tmp)
    res["ensemble"] = {n: {**v, "sequences_per_s": int(n) * seqs / v["net_s"] if v["net_s"] > 0 else float("nan")} for n, v in ens.items()}
    return res


# ---------------------------------------------------------------------------------- report
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none used"
    return f"{cpu}, {os.cpu_count()} cores visible, GPU: {gpu}; Python {platform.python_version()}, torch {torch.__version__}, 1 torch thread"


def _row(name: str, value: float, key: str | None = None) -> str:
    if key is None:
        return f"| {name} | {value:.2f}x | | |"
    label, target = TARGETS[key]
    return f"| {name} | {value:.2f}x | <= {target:g}x | {'met' if value <= target else 'NOT met'} |"


def overhead_report(oh: dict[str, dict[str, float]], tens: dict[str, dict[str, float]], steps: int, ens_steps: int, repeats: int) -> list[str]:
    """The overhead-bound section (issue 22 goals 1-2): tiny models whose arithmetic is negligible."""
    lines = [
        "",
        f"## Overhead-bound regime: tiny models (d_model 16, batch {TINY_BATCH}; {steps} steps, ms/step net of fixed start-up, median of {repeats})",
        "",
        "Each run's time minus the same run with 0 steps, over the steps: what a step costs once set-up is paid. "
        "Bare Lightning is a minimal LightningModule on the same model and data module, with the same validation cadence "
        "and gradient clipping, and no logger, checkpoint or callback (`bare_lightning` in run.py).",
        "",
        "| setting | plain loop ms/step | bare Lightning ms/step | `clamp fit` ms/step | `clamp fit` - bare Lightning ms/step | target |",
        "|---|---|---|---|---|---|",
    ]
    for setting, v in oh.items():
        extra = v["clamp fit (no emergence)"] - v["bare Lightning"]
        lines.append(f"| {setting} | {v['plain loop']:.2f} | {v['bare Lightning']:.2f} | {v['clamp fit (no emergence)']:.2f} | {extra:+.2f} | <= 0.3 ({'met' if extra <= 0.3 else 'NOT met'}) |")
    if tens:
        one = tens["1"]["net_s"]
        lines += [
            "",
            f"Ensembles of the tiny 2 layers x 2 heads model ({ens_steps} steps, 1 thread; wall time net of each run's own start-up, "
            "the same run with 1 step (the ensemble loop refuses 0); N sequential runs take N x one run):",
            "",
            "| run | wall s | start-up s | net s | net x one run | throughput x sequential | target |",
            "|---|---|---|---|---|---|---|",
        ]
        goals = {"16": 2.0, "64": 4.0}
        for key, v in tens.items():
            n, worker = key.split("+")[0], key.endswith("+worker")
            r = v["net_s"] / one
            goal = f"<= {goals[n]:g}x ({'met' if r <= goals[n] else 'NOT met'})" if n in goals else ""
            name = "one `clamp fit` run" if n == "1" else f"ensemble of {n}" + (", `data.num_workers: 1`" if worker else "")
            lines.append(f"| {name} | {v['wall_s']:.1f} | {v['startup_s']:.1f} | {v['net_s']:.1f} | {r:.2f} | {int(n) / r:.1f} | {goal} |")
        if any(k.endswith("+worker") for k in tens):
            lines += [
                "",
                "With `data.num_workers: 1` one worker process samples every member's batches (a lockstep DataLoader) "
                "on another core while the training process steps; one run is measured sampling in its own process, its fastest setting "
                "(a single tiny run with a worker is slower: the hand-over costs more than its sampling).",
            ]
    return lines


def gpu_report(res: dict[str, Any], steps: int, ens_steps: int) -> list[str]:
    fit, plain = res["fit"], res["fit"]["plain loop"]
    lines = [
        "",
        f"## On {res['device']}: the default experiment ({steps} steps)",
        "",
        "| run | wall s | x plain loop |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} | {v / plain:.2f} |" for k, v in fit.items()]
    emergence = fit["clamp fit (default, with emergence)"] / fit["clamp fit (no emergence)"]
    lines += ["", f"The emergence callback (default cadence) costs {100 * (emergence - 1):+.0f} % of the run without it.", ""]
    one = res["ensemble"]["1"]
    lines += [
        f"Ensembles of the default model ({ens_steps} steps, batch {default_config()['data']['batch_size']} per member; net of each run's start-up):",
        "",
        "| run | net s (minus a 1-step run) | sequences/s | x one run (wall, net) | throughput x sequential |",
        "|---|---|---|---|---|",
    ]
    for n, v in res["ensemble"].items():
        r = v["net_s"] / one["net_s"]
        lines.append(f"| {'one `clamp fit` run' if n == '1' else f'ensemble of {n}'} | {v['net_s']:.1f} | {v['sequences_per_s']:.0f} | {r:.2f} | {int(n) / r:.1f} |")
    return lines


def bench(
    steps: int | None = None,
    ensemble_steps: int = 200,
    ensemble_sizes: list[int] = [1, 4, 8, 16],  # noqa: B006 (jsonargparse default)
    repeats: int = 3,
    rounds: int = 7,
    step_count: int = 30,
    memory_steps: int = 20,
    overhead_steps: int = 1000,
    tiny_ensemble_sizes: list[int] = [16, 64],  # noqa: B006
    gpu_ensemble_sizes: list[int] = [8, 64, 256],  # noqa: B006
    compile_backend: str = "inductor",
    device: str = "cpu",
    only: str | None = None,
    quick: bool = False,
    out: str | None = None,
    render: str | None = None,
) -> str:
    """Run every measurement and write the report.

    Args:
        steps: training steps of each ``clamp fit`` / plain-loop run (default: the default experiment's
            ``max_steps``, so the fixed start-up cost weighs as much as in the run a user starts).
        ensemble_steps: steps of each ensemble and of its one-run baseline.
        ensemble_sizes: ensemble sizes N to time.
        repeats: interleaved repeats of the fit comparisons (median reported).
        rounds: round-robin rounds of the per-step comparisons.
        step_count: steps per configuration per round.
        memory_steps: training steps of each memory measurement.
        overhead_steps: steps of each run of the overhead-bound section (tiny models) and of its ensembles.
        tiny_ensemble_sizes: ensemble sizes of the overhead-bound section.
        gpu_ensemble_sizes: ensemble sizes (default-size models) of the device section.
        compile_backend: the ``model.compile`` backend timed in the device section.
        device: ``cpu`` or ``cuda``; ``cuda`` runs the device section (``only='device'``) on the GPU.
        only: ``overhead`` (the overhead-bound section alone, to RESULTS_overhead.md) or ``device`` (the
            device section and the overhead-bound section on ``device``, to RESULTS_<device>.md).
        quick: a smoke run: a few steps of everything (numbers meaningless).
        out: where to write the report (default: RESULTS.md, or the file ``only`` names).
        render: a RESULTS.json of an earlier full run: write its report again (same numbers, current
            wording) instead of measuring.
    """
    if render is not None:
        text = full_report(json.loads(Path(render).read_text()), overhead_steps)
        Path(out or OUT).write_text(text)
        return text
    check_device(device)
    if device == "cuda" and only is None:
        only = "device"  # the GPU benchmark writes its own results file
    if only not in (None, "overhead", "device"):
        raise ValueError(f"--only {only!r}; valid: None (everything), 'overhead', 'device'")
    if only is not None:
        return bench_section(only, device, steps, overhead_steps, repeats, tiny_ensemble_sizes, gpu_ensemble_sizes, quick, out, compile_backend)
    out = out or str(OUT)
    torch.set_num_threads(1)
    steps = steps or int(default_config()["trainer"]["max_steps"])
    if quick:
        steps, ensemble_steps, ensemble_sizes, repeats, rounds, step_count, memory_steps = 100, 50, [1, 4], 1, 1, 3, 10
        overhead_steps, tiny_ensemble_sizes = 20, [2]
        if out == str(OUT):  # a smoke run never replaces the committed measurement
            out = str(Path(tempfile.gettempdir()) / "clamp_benchmark_quick.md")
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        plain_loop(fit_config(5, False, str(tmp / "warm")))  # untimed: imports and first-call costs
        time_clamp_fit(fit_config(5, True, str(tmp / "warm")), tmp)
        fits: dict[str, list[float]] = {"plain loop": [], "clamp fit (no emergence)": [], "clamp fit (default, with emergence)": []}
        cpu: dict[str, list[float]] = {k: [] for k in fits}  # process CPU seconds: a shared VM's steal time is not in them
        for r in range(repeats):
            order = list(fits) if r % 2 == 0 else list(fits)[::-1]
            for name in order:
                c0 = time.process_time()
                if name == "plain loop":
                    fits[name].append(plain_loop(fit_config(steps, False, str(tmp / "runs"))))
                else:
                    fits[name].append(time_clamp_fit(fit_config(steps, "with emergence" in name, str(tmp / "runs")), tmp))
                cpu[name].append(time.process_time() - c0)
                print(f"[fit] {name}: {fits[name][-1]:.1f} s, {cpu[name][-1]:.1f} CPU s", flush=True)
        results["fit"] = {k: statistics.median(v) for k, v in fits.items()}
        results["fit_all"] = fits
        results["fit_cpu"] = {k: statistics.median(v) for k, v in cpu.items()}
        results["fit_cpu_all"] = cpu
        results["emergence_parts"] = emergence_breakdown(steps, tmp)
        print(f"[emergence parts] {results['emergence_parts']}", flush=True)
        # the fixed part of `clamp fit`: config parsing, set-up, summary and teardown around zero steps
        results["startup"] = statistics.median(time_clamp_fit(fit_config(0, False, str(tmp / "runs")), tmp) for _ in range(repeats))
        results["steps"] = step_timings(rounds, step_count)
        print(f"[steps] {results['steps']}", flush=True)
        results["ensemble"] = ensemble_timings(ensemble_sizes, ensemble_steps, tmp, emergence=False)
        print(f"[ensemble] {results['ensemble']}", flush=True)
        results["memory"] = memory(memory_steps)
        print(f"[memory] {results['memory']}", flush=True)
        results["overhead"] = overhead_timings(overhead_steps, repeats, tmp)
        results["tiny_ensemble"] = tiny_ensembles(tiny_ensemble_sizes, overhead_steps, tmp)
    elapsed = time.perf_counter() - t_start
    results["_context"] = {
        "steps": steps, "ensemble_steps": ensemble_steps, "overhead_steps": overhead_steps, "repeats": repeats,
        "load_before": load_before, "load_after": os.getloadavg(), "elapsed_s": elapsed, "quick": quick,
    }  # fmt: skip
    text = full_report(results)
    Path(out).write_text(text)
    (Path(out).with_suffix(".json")).write_text(json.dumps(results, indent=2, default=str))
    print(text)
    return text


def bench_section(
    only: str, device: str, steps: int | None, overhead_steps: int, repeats: int, tiny_sizes: list[int], gpu_sizes: list[int], quick: bool, out: str | None,
    compile_backend: str = "inductor",
) -> str:
    """One section of :func:`bench` on ``device``, written to its own file (``RESULTS_overhead.md``, ``RESULTS_<device>.md``)."""
    torch.set_num_threads(1)
    steps = steps or int(default_config()["trainer"]["max_steps"])
    ensemble_steps = 200
    if quick:
        steps, ensemble_steps, overhead_steps, repeats, tiny_sizes, gpu_sizes = 20, 10, 20, 1, [2], [2]
    default_out = OUT.with_name("RESULTS_overhead.md" if only == "overhead" else f"RESULTS_{device}.md")
    out = out or str(default_out if not quick else Path(tempfile.gettempdir()) / f"clamp_benchmark_quick_{only}_{device}.md")
    load0, t_start = os.getloadavg(), time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        plain_loop(on_device(fit_config(5, False, str(tmp / "warm")), device), device)  # untimed: imports and first-call costs
        time_clamp_fit(on_device(fit_config(5, True, str(tmp / "warm")), device), tmp)
        if only == "device":
            results["device"] = gpu_timings(device, steps, ensemble_steps, gpu_sizes, tmp, compile_backend)
        results["overhead"] = overhead_timings(overhead_steps, repeats, tmp, device)
        results["tiny_ensemble"] = tiny_ensembles(tiny_sizes, overhead_steps, tmp, device)
    load1, elapsed = os.getloadavg(), time.perf_counter() - t_start
    title = "overhead-bound section" if only == "overhead" else f"{device} section"
    lines = [
        f"# clamp benchmark: {title}",
        "",
        f"Generated by `python experiments/benchmarks/run.py --device {device} --only {only}` (all numbers below come from one run of it).",
        "",
        f"- Machine: {machine()}",
        f"- Load average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, at end {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}; total {elapsed / 60:.1f} min",
    ]
    if quick:
        lines.append("- **Quick smoke run: too few steps for the numbers to mean anything.**")
    if "device" in results:
        lines += gpu_report(results["device"], steps, ensemble_steps)
    lines += overhead_report(results["overhead"], results["tiny_ensemble"], overhead_steps, overhead_steps, repeats)
    text = "\n".join(lines) + "\n"
    Path(out).write_text(text)
    Path(out).with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    print(text)
    return text


def full_report(results: dict[str, Any], overhead_steps: int = 1000) -> str:
    """RESULTS.md from one run's ``results`` (also as re-read from its RESULTS.json by ``--render``)."""
    c = results["_context"]
    overhead_steps = c.get("overhead_steps", overhead_steps)
    repeats = c.get("repeats", len(results["fit_all"]["plain loop"]))
    text = report(results, c["steps"], c["ensemble_steps"], tuple(c["load_before"]), tuple(c["load_after"]), c["elapsed_s"], c["quick"])
    text += "\n".join(overhead_report(results["overhead"], results["tiny_ensemble"], overhead_steps, overhead_steps, repeats)) + "\n"
    text += OVERHEAD_BLOCKERS
    text += (
        "\n## On a GPU: unmeasured\n\nNo GPU was lent to the session that wrote this file, so the GPU numbers are unmeasured. "
        "`python experiments/benchmarks/run.py --device cuda` measures them (default fit against the plain loop, the emergence "
        "callback's overhead, `bf16-mixed`, `model.compile`, ensembles of 8, 64 and 256 default-size models, and the "
        "overhead-bound section) and writes `RESULTS_cuda.md`; its code path is tested on the CPU "
        "(`--device cpu --only device`, tests/test_benchmark.py).\n"
    )
    return text


#: what a profile says blocks the overhead-bound goals (issue 22), written under the measured tables
OVERHEAD_BLOCKERS = """
What blocks the overhead-bound goals (cProfile of this code, in-process, while another job shared the machine;
shares are indicative, the tables above are the measurement):

- `clamp fit` over bare Lightning (1 layer x 1 head, 400 steps): Lightning calls every hook of every callback
  each step (with a profiler context and a state key per call), and a default `clamp fit` has several (two
  `ModelCheckpoint`s, `LearningRateMonitor` and clamp's own, e.g. its stop-signal callback) where bare Lightning has none:
  about 12,600 hook calls in 400 steps; the checkpoint written at every validation (kept: it is the resume
  guarantee), and the logger connector's `self.log` handling at logging steps and validations, are the rest.
  Removing those costs means fewer callbacks in the default config or a loop of clamp's own, not a local fix.
- Ensembles: each member's batch is sampled from its own seed's generator (`batch_rng(seed, 0, step)`), which
  is what keeps members bitwise equal to separate runs (tests/test_ensemble.py); torch samples from one
  generator at a time, so N members pay N samplings (~0.3 ms each). With `data.num_workers: 1` one lockstep
  worker does them on another core (the rows above); it is no clear win: the worker's N samplings per step and
  the hand-over of N batches through one pipe take about as long as they save, and across runs of this
  benchmark on this shared VM it came out ahead at 16 members in one run and at 64 in another. What
  is left in the training process is arithmetic that grows with N: the stacked forward and backward (real work
  even at d_model 16: 64 members are a batch of 512 sequences), one AdamW over the stacked parameters, each
  member's masked loss and accuracy (~1 ms/step at 16 members; one loss over the stacked logits would round
  differently from a single run's, so members would no longer equal separate runs), and at each validation the
  members' forwards (whole batches while they fit `EVAL_CACHE_BYTES`), checkpoints (written by threads) and logs.
"""


def report(res: dict[str, Any], steps: int, ens_steps: int, load0: tuple, load1: tuple, elapsed: float, quick: bool) -> str:
    fit, st, ens, mem = res["fit"], res["steps"], res["ensemble"], res["memory"]
    plain = fit["plain loop"]
    lines = [
        "# clamp end-to-end benchmark",
        "",
        "Generated by `python experiments/benchmarks/run.py` (all numbers below come from one run of it; "
        "ratios are only comparable within one run).",
        "",
        f"- Machine: {machine()}",
        f"- Load average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, at end {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}; total {elapsed / 60:.1f} min",
    ]
    if quick:
        lines.append("- **Quick smoke run: too few steps for the numbers to mean anything.**")
    lines += ["", "## Ratios against the targets of issue 12", "", "| measurement | ratio | target | |", "|---|---|---|---|"]
    lines.append(_row("`clamp fit` without emergence / plain PyTorch loop (wall)", fit["clamp fit (no emergence)"] / plain, "fit_vs_plain"))
    cpu = res.get("fit_cpu")
    if cpu:
        lines.append(_row("`clamp fit` without emergence / plain PyTorch loop (CPU time)", cpu["clamp fit (no emergence)"] / cpu["plain loop"], "fit_vs_plain"))
    lines.append(_row("`clamp fit` with emergence (default cadence) / without (wall)", fit["clamp fit (default, with emergence)"] / fit["clamp fit (no emergence)"], "emergence"))
    if cpu:
        lines.append(_row("`clamp fit` with emergence (default cadence) / without (CPU time)", cpu["clamp fit (default, with emergence)"] / cpu["clamp fit (no emergence)"], "emergence"))
    if "emergence_parts" in res:  # the callback's own time: immune to the run-to-run noise of whole fits
        own = sum(v for k, v in res["emergence_parts"].items() if not k.startswith((" ", "(")))
        lines.append(_row("`clamp fit` + the emergence callback's own time (instrumented) / without", 1 + own / fit["clamp fit (no emergence)"], "emergence"))
    lines.append(_row("head ablation step / plain step (clamp)", st["clamp head ablation"] / st["clamp plain"], "ablation"))
    lines.append(_row("clamp-to-reference step / plain step", st["clamp clamp_to_reference"] / st["clamp plain"], "reference"))
    one = ens["one run"]
    for key, n in (("ens8", 8), ("ens16", 16)):
        for name, v in ens.items():
            if name == f"ensemble of {n}" or name.startswith(f"ensemble of {n}, "):
                threads = name.split(", ")[1] if ", " in name else "1 thread"
                lines.append(_row(f"ensemble of {n} seeds ({threads}) / one run (1 thread)", v / one, key))
    if "TransformerLens head ablation (hooks)" in st:
        lines.append(_row("TransformerLens head ablation / clamp head ablation", st["TransformerLens head ablation (hooks)"] / st["clamp head ablation"]))
        lines.append(_row("pyvene head ablation / clamp head ablation", st["pyvene head ablation (on the TL model)"] / st["clamp head ablation"]))
    lines += [
        "",
        f"## 1. `clamp fit` vs a plain loop ({steps} steps of the default experiment, median of {len(res['fit_all']['plain loop'])})",
        "",
        "The plain loop (`plain_loop` in run.py) trains the same model on the same data stream with the same AdamW, "
        "warmup, gradient clipping and validation cadence, keeping the loss in a list; `clamp fit` also writes "
        "TensorBoard logs and a checkpoint at every validation.",
        "",
        "Wall time on a shared virtual machine varies from run to run, by up to ~15% between repeats of the same "
        "configuration here; each run's process CPU time is given too (where it tracks wall time, the machine itself "
        "ran slower, e.g. caches and memory bandwidth shared with other tenants, rather than lending the CPU away). "
        "The instrumented breakdown below measures the emergence callback's own time inside one run, which this "
        "variation does not touch.",
        "",
        "| run | wall s | x plain loop | every repeat, wall s | CPU s | x plain loop (CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for k, v in fit.items():
        c = cpu[k] if cpu else float("nan")
        c_plain = cpu["plain loop"] if cpu else float("nan")
        lines.append(f"| {k} | {v:.1f} | {v / plain:.2f} | {', '.join(f'{x:.1f}' for x in res['fit_all'][k])} | {c:.1f} | {c / c_plain:.2f} |")
    if "startup" in res:
        up = res["startup"]
        lines += [
            "",
            f"Of `clamp fit`'s time, {up:.1f} s is fixed (LightningCLI parsing and validating the config, set-up, "
            f"summary and teardown: `clamp fit` with `max_steps: 0`); without it, `clamp fit` (no emergence) takes "
            f"{(fit['clamp fit (no emergence)'] - up) / plain:.2f}x the plain loop.",
        ]
    if "emergence_parts" in res:
        parts = dict(res["emergence_parts"])
        whole = parts.pop("(the whole run)")
        extra = fit["clamp fit (default, with emergence)"] - fit["clamp fit (no emergence)"]
        lines += [
            "",
            f"Where the emergence callback's time goes (one more instrumented run with it, {whole:.1f} s; the medians above "
            f"put its cost at {extra:.1f} s; indented rows are part of the row above them):",
            "",
            "| part | s | % of the run without emergence |",
            "|---|---|---|",
        ]
        lines += [f"| {k.replace('  ', '&nbsp;&nbsp;')} | {v:.2f} | {100 * v / fit['clamp fit (no emergence)']:.1f} |" for k, v in parts.items()]
    lines += ["", "## 2. Per training step (batch 128, 5 tokens, the default model; median ms/step, round-robin)", "", "| configuration | ms/step | x clamp plain |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {v / st['clamp plain']:.2f} |" for k, v in st.items() if not k.startswith("_")]
    for k, why in st.get("_unavailable", {}).items():
        lines.append(f"\n{k} not measured: could not be imported here ({why}).")
    lines += [
        "",
        "TransformerLens and pyvene take token inputs, so every row here uses token inputs of the default shape. "
        "pyvene wraps the TransformerLens model: on clamp's model its in-place write into the attention output breaks "
        "the backward pass of the fused attention kernel, so it cannot train through it.",
        "",
        f"## 3. Ensembles ({ens_steps} steps of the default experiment without emergence, seeds 0..N-1)",
        "",
        "| run | wall s | x one run | N x one run / ensemble (throughput gain) |",
        "|---|---|---|---|",
        f"| one `clamp fit` run | {one:.1f} | 1.00 | |",
    ]
    for k, v in ens.items():
        if k.startswith("ensemble of "):
            n = int(k.split(",")[0].split()[-1])
            lines.append(f"| {k} | {v:.1f} | {v / one:.2f} | {n * one / v:.2f} |")
    lines += [
        "",
        "N sequential runs take N x one run (runs are independent); the ensemble's members are ordinary run folders "
        "whose curves equal the separate runs' (tests/test_ensemble.py). One run and the plain ensembles use one torch "
        "thread (a single tiny run is fastest that way); the rows with more threads give the same ensemble every core "
        "of the machine, as `torch_threads` in its config does.",
    ]
    floors = [(n, st[f"clamp plain, batch x{n}"] / st["clamp plain"]) for n in (8, 16) if f"clamp plain, batch x{n}" in st]
    if floors:
        lines += [
            "",
            "The floor: " + "; ".join(f"one model training on {n}x the batch (the arithmetic of {n} members, as one batched computation) takes {r:.2f}x a step" for n, r in floors)
            + " (section 2, one thread). An ensemble cannot do its members' training arithmetic in less. It does share "
            "what each run pays once (start-up, evaluation sets, validation set-up), which one short run carries in full, "
            "so over these few steps an ensemble can come in under the floor; over a long run its ratio tends to the floor. "
            "On this CPU that floor, not the per-operation overhead that batching removes, is what bounds an ensemble.",
        ]
    lines += [
        "",
        "## 4. Peak memory (resident set of a fresh process; every pattern clamped to a reference model vs no clamp)",
        "",
        f"The large model: n_context {LARGE['n_context']} (65 tokens), d_model {LARGE['d_model']}, batch {LARGE['batch_size']}. "
        "Before training, the process holds the imported libraries, the model and, with a reference, the reference's copy "
        "of the weights. "
        + ("The peak is that of training alone (the kernel's peak-RSS counter is reset once set-up is done), so what training "
           "adds is activations, gradients, optimizer state and the reference's cached activations."
           if all(v.get("peak_reset") for v in mem.values()) else
           "This machine could not reset the peak-RSS counter, so the peak includes the imports' transient peak."),
        "",
        "| | peak in training MiB | before training MiB | added by training MiB |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | {v['peak_mib']:.0f} | {v['before_training_mib']:.0f} | {v['peak_mib'] - v['before_training_mib']:.0f} |" for k, v in mem.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    from jsonargparse import auto_cli

    auto_cli(bench, as_positional=False)


if __name__ == "__main__":
    main()
