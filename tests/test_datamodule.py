"""The DataModule's reproducibility guarantees: worker-, resume- and rank-invariant train streams, fixed eval sets."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

import synthetic_data.datamodule as dm_mod
from synthetic_data import (
    AssociativeRecall,
    BurstyClassification,
    RepeatedTokens,
    SyntheticDataModule,
    TaskStream,
    TensorDictDataset,
)


def bursty() -> BurstyClassification:
    return BurstyClassification(n_classes=50, dim=8, n_context=4, burstiness=2, n_labels=8)


def take(iterable, n: int) -> list[dict[str, torch.Tensor]]:
    return list(islice(iter(iterable), n))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_distinct(batches: list[dict[str, torch.Tensor]]) -> None:
    for i in range(len(batches)):
        for j in range(i + 1, len(batches)):
            assert not same(batches[i], batches[j]), (i, j)


def test_train_stream_same_for_zero_and_two_workers() -> None:
    single = take(SyntheticDataModule(bursty(), batch_size=8, seed=3, num_workers=0).train_dataloader(), 6)
    multi = take(SyntheticDataModule(bursty(), batch_size=8, seed=3, num_workers=2).train_dataloader(), 6)
    assert_distinct(single)
    for a, b in zip(single, multi, strict=True):
        assert same(a, b)
    assert single[0]["tokens"].shape == (8, 9) and single[0]["features"].shape == (8, 9, 8)


def test_train_stream_depends_on_seed() -> None:
    a = take(SyntheticDataModule(bursty(), batch_size=8, seed=0).train_dataloader(), 1)[0]
    b = take(SyntheticDataModule(bursty(), batch_size=8, seed=1).train_dataloader(), 1)[0]
    assert not torch.equal(a["features"], b["features"])


def test_start_offset_resumes_the_stream() -> None:
    task = RepeatedTokens(vocab_size=20, seq_len=32, min_period=3, max_period=8)
    full = take(TaskStream(task, batch_size=4, seed=7), 7)
    resumed = take(TaskStream(task, batch_size=4, seed=7, start=3), 4)
    assert_distinct(full)
    for a, b in zip(full[3:], resumed, strict=True):
        assert same(a, b)


def test_ranks_get_disjoint_interleaved_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    task = AssociativeRecall(seq_len=32, n_pairs=3)
    world1 = take(TaskStream(task, batch_size=4, seed=11), 8)
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setattr(dm_mod, "_rank_world", lambda rank=rank: (rank, 2))
        per_rank.append(take(TaskStream(task, batch_size=4, seed=11), 4))
    r0, r1 = per_rank
    for a in r0:
        assert not any(same(a, b) for b in r1)
    interleaved = [b for pair in zip(r0, r1) for b in pair]
    for a, b in zip(interleaved, world1, strict=True):
        assert same(a, b)
    # resuming on a rank continues that rank's share
    monkeypatch.setattr(dm_mod, "_rank_world", lambda: (1, 2))
    assert same(take(TaskStream(task, batch_size=4, seed=11, start=2), 1)[0], r1[2])


def test_eval_sets_fixed_and_seeded() -> None:
    dm = SyntheticDataModule(bursty(), eval_size=40, eval_batch_size=16, seed=5)
    assert dm.eval_split_names == ("ic", "iw")
    ic = dm.eval_set("ic")
    assert dm.eval_set("ic") is ic
    again = SyntheticDataModule(bursty(), eval_size=40, eval_batch_size=16, seed=5)
    assert same(again.eval_set("ic"), ic) and same(again.eval_set("iw"), dm.eval_set("iw"))
    other = SyntheticDataModule(bursty(), eval_size=40, eval_batch_size=16, seed=6)
    assert not torch.equal(other.eval_set("ic")["features"], ic["features"])
    assert not same(dm.eval_set("ic"), dm.eval_set("iw"))
    assert ic["tokens"].shape[0] == 40
    # eval sets do not depend on what the train stream consumed
    take(dm.train_dataloader(), 3)
    assert same(SyntheticDataModule(bursty(), eval_size=40, eval_batch_size=16, seed=5).eval_set("ic"), ic)
    with pytest.raises(KeyError, match="unknown eval split"):
        dm.eval_set("train")


def test_val_dataloaders_cover_eval_sets() -> None:
    dm = SyntheticDataModule(bursty(), eval_size=40, eval_batch_size=16, seed=5)
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    for name, loader in zip(dm.eval_split_names, loaders):
        batches = list(loader)
        assert [len(b["tokens"]) for b in batches] == [16, 16, 8]
        for key, full in dm.eval_set(name).items():
            assert torch.equal(torch.cat([b[key] for b in batches]), full), key


def test_tensor_dict_dataset_checks_lengths() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        TensorDictDataset({"a": torch.zeros(3), "b": torch.zeros(4)})
    ds = TensorDictDataset({"a": torch.arange(3), "b": torch.zeros(3, 2)})
    assert len(ds) == 3 and ds[1]["a"] == 1 and ds[1]["b"].shape == (2,)


def test_datamodule_validates_sizes() -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        SyntheticDataModule(bursty(), batch_size=0)
