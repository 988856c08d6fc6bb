"""Issue 22: the benchmark's device path runs on the CPU, and the training hot path is device-clean.

No GPU is at hand here, so the ``meta`` device stands in for one: a meta tensor has a shape but no
data, so any step that reads a value on the host (``.item()``, boolean indexing, a data-dependent
shape) raises, and mixing it with a tensor created on the CPU by default raises too. A hot path that
runs on meta creates every tensor on its inputs' device and never synchronises with the host.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from clamp.ensemble.trainer import EnsembleTrainer
from clamp.training import masked_loss_and_accuracy, masked_loss_and_accuracy_sync_free
from models import Transformer, TransformerConfig
from models.ensemble import EnsembleTransformer
from synthetic_data import BurstyClassification
from synthetic_data.base import batch_rng, model_inputs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))
import run as bench  # noqa: E402


def _tiny() -> tuple[TransformerConfig, dict[str, torch.Tensor]]:
    task = BurstyClassification(n_classes=32, dim=16, n_context=2, n_labels=8)
    task.setup(0)
    s = task.spec
    cfg = TransformerConfig(n_layers=2, n_heads=2, d_model=16).resolved(d_vocab=s.d_vocab, n_ctx=s.n_ctx, d_feature=s.d_feature, d_out=s.d_out)
    return cfg, task.sample(batch_rng(0, 0, 0), 8, "train")


def test_sync_free_loss_equals_the_indexed_one() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 7, generator=g)
    mask = torch.rand(6, 5, generator=g) < 0.4
    mask[0, 0] = True
    targets = torch.randint(0, 7, (6, 5), generator=g)
    targets[~mask] = -1  # filler where nothing is scored: must not reach cross_entropy
    batch = {"loss_mask": mask, "targets": targets}
    loss, acc = masked_loss_and_accuracy(logits, batch)  # the CPU path: boolean indexing
    free_loss, free_acc = masked_loss_and_accuracy_sync_free(logits, batch)
    torch.testing.assert_close(free_loss, loss)
    torch.testing.assert_close(free_acc, acc)


def test_the_loss_reads_nothing_on_the_host_off_the_cpu() -> None:
    """On meta (no data), boolean indexing fails; the loss used off the CPU does not."""
    cfg, batch = _tiny()
    meta = {k: v.to("meta") for k, v in batch.items()}
    logits = torch.zeros(*batch["targets"].shape, cfg.d_out, device="meta")
    with pytest.raises((NotImplementedError, RuntimeError)):
        logits[meta["loss_mask"]]
    loss, acc = masked_loss_and_accuracy(logits, meta)
    assert loss.device.type == acc.device.type == "meta"


def test_a_training_step_creates_every_tensor_on_the_model_device() -> None:
    """Forward, loss, backward, clipping and AdamW of one model and of an ensemble (with the
    ensemble's per-member clipping), all on meta: a tensor made on the CPU by default would raise."""
    cfg, batch = _tiny()
    meta = {k: v.to("meta") for k, v in batch.items()}
    model = Transformer(cfg).to("meta")
    loss, _ = masked_loss_and_accuracy(model(*model_inputs(meta)), meta)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    assert all(p.device.type == "meta" for p in model.parameters())

    ens = EnsembleTransformer(cfg, 3).to("meta")
    stacked = {k: torch.stack([v] * 3) for k, v in meta.items()}
    logits = ens(*model_inputs(stacked))
    losses = torch.stack([masked_loss_and_accuracy(logits[i], {k: v[i] for k, v in stacked.items()})[0] for i in range(3)])
    losses.sum().backward()
    settings = SimpleNamespace(gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    EnsembleTrainer._clip_gradients(SimpleNamespace(settings=settings, model=ens))  # type: ignore[arg-type]
    torch.optim.AdamW(ens.parameters(), lr=1e-3).step()
    assert logits.device.type == "meta" and all(p.grad.device.type == "meta" for p in ens.parameters())


def test_benchmark_refuses_a_device_it_cannot_use() -> None:
    with pytest.raises(ValueError, match=r"--device 'tpu'; valid devices: \['cpu', 'cuda'\]"):
        bench.check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: torch sees no CUDA device"):
            bench.bench(device="cuda")
    with pytest.raises(ValueError, match="--only 'gpu'; valid"):
        bench.bench(only="gpu")


def test_on_device_reaches_the_trainer_precision_and_compile() -> None:
    cfg = bench.on_device(bench.fit_config(3, False, "unused"), "cuda", "bf16-mixed", "inductor")
    assert (cfg["trainer"]["accelerator"], cfg["trainer"]["precision"], cfg["model"]["compile"]) == ("gpu", "bf16-mixed", "inductor")
    tiny = bench.tiny_config(3, "1 layer x 1 head", "unused", "cpu")
    assert tiny["trainer"]["accelerator"] == "cpu" and tiny["data"]["batch_size"] == bench.TINY_BATCH
    assert {k: tiny["model"]["transformer"][k] for k in ("n_layers", "n_heads", "d_model")} == bench.TINY["1 layer x 1 head"]


def test_the_device_section_runs_on_the_cpu(tmp_path: Path) -> None:
    """The code path of ``run.py --device cuda`` (every fit variant, the ensembles, the report), on the CPU."""
    res = bench.gpu_timings("cpu", steps=3, ensemble_steps=3, sizes=[2], tmp=tmp_path, compile_backend="aot_eager")
    assert set(res["fit"]) == {
        "plain loop", "clamp fit (no emergence)", "clamp fit (default, with emergence)",
        "clamp fit (no emergence), bf16-mixed", "clamp fit (no emergence), model.compile (aot_eager)",
    }  # fmt: skip
    assert all(v > 0 for v in res["fit"].values())
    assert set(res["ensemble"]) == {"1", "2"} and all(v["wall_s"] > 0 for v in res["ensemble"].values())
    text = "\n".join(bench.gpu_report(res, 3, 3))
    assert "ensemble of 2" in text and "bf16-mixed" in text and "model.compile" in text
    net = bench.overhead_report({"s": {"plain loop": 1.0, "bare Lightning": 1.5, "clamp fit (no emergence)": 2.0}}, {"1": {"wall_s": 2, "startup_s": 1, "net_s": 1}, "16": {"wall_s": 4, "startup_s": 1, "net_s": 3}}, 10, 10, 1)
    assert "| s | 1.00 | 1.50 | 2.00 | +0.50 | <= 0.3 (NOT met) |" in net and "| ensemble of 16 | 4.0 | 1.0 | 3.0 | 3.00 | 5.3 | <= 2x (NOT met) |" in net
