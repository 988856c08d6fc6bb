"""DDP with spawn-started DataLoader workers: each rank still gets its own share of the global batch order.

A spawn-started worker cannot see the process group, so a rank looked up there is 0 of 1 on every
rank (every rank then trains on the same batches). Two real gloo ranks, one spawn worker each, for
the synthetic and the text data modules.
"""

from __future__ import annotations

import random
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from synthetic_data import RepeatedTokens, SyntheticDataModule

N_BATCHES = 3  # per rank
WORDS = "in the beginning god created heaven and earth was without form void darkness upon face of deep".split()


def corpus(n_docs: int = 120) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) for _ in range(n_docs)]


def synthetic_dm() -> SyntheticDataModule:
    return SyntheticDataModule(RepeatedTokens(vocab_size=20, seq_len=16, min_period=3, max_period=6), batch_size=4, eval_size=4, seed=5, num_workers=1)


def text_dm(root: Path, num_workers: int = 1):  # noqa: ANN201 (TextDataModule, imported late: it pulls in datasets)
    from clamp.text import TextDataModule

    return TextDataModule(str(root / "corpus.txt"), n_ctx=16, batch_size=4, vocab_size=300, eval_size=4, num_workers=num_workers, cache_dir=str(root / "cache"))


def take(dm, n: int) -> list[dict[str, torch.Tensor]]:  # noqa: ANN001
    return list(islice(iter(dm.train_dataloader()), n))


def _rank_main(rank: int, root: str) -> None:
    """One DDP rank: join the group, read a few batches through one spawn-started worker per data module."""
    dist.init_process_group("gloo", init_method=f"file://{root}/pg", rank=rank, world_size=2)
    try:
        out = {}
        for name, dm in (("synthetic", synthetic_dm()), ("text", text_dm(Path(root)))):
            dm.multiprocessing_context = "spawn"
            out[name] = take(dm, N_BATCHES)
        torch.save(out, f"{root}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_with_spawn_workers_read_disjoint_shares_of_the_global_order(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("\n\n".join(corpus()))
    single_text = text_dm(tmp_path, num_workers=0)  # trains and caches the BPE before the ranks start
    mp.spawn(_rank_main, args=(str(tmp_path),), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    # synthetic: rank r's k-th batch is global batch 2k + r of the one-process stream
    single = take(synthetic_dm(), 2 * N_BATCHES)
    r0, r1 = ranks[0]["synthetic"], ranks[1]["synthetic"]
    assert not any(torch.equal(a["tokens"], b["tokens"]) for a in r0 for b in r1)  # disjoint batches
    interleaved = [b for pair in zip(r0, r1, strict=True) for b in pair]
    for got, want in zip(interleaved, single, strict=True):
        assert torch.equal(got["tokens"], want["tokens"])

    # text: the ranks' blocks are disjoint and together are the one-process stream's first blocks
    want_blocks = [b["index"].tolist() for b in take(single_text, 2 * N_BATCHES)]
    t0, t1 = ([b["index"].tolist() for b in r["text"]] for r in ranks)
    assert not {i for b in t0 for i in b} & {i for b in t1 for i in b}
    assert [b for pair in zip(t0, t1, strict=True) for b in pair] == want_blocks
