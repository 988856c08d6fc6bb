"""Statistical and structural checks of the synthetic task generators, on real samples."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from synthetic_data import (
    AssociativeRecall,
    BurstyClassification,
    MarkovICL,
    RepeatedTokens,
    SyntheticTask,
    load_exemplars,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def ready(task: SyntheticTask, seed: int = 0) -> SyntheticTask:
    task.setup(seed)
    return task


TASKS = {
    "bursty": lambda: BurstyClassification(n_classes=200, dim=16, n_context=4, burstiness=2, n_labels=8),
    "bursty_mixed": lambda: BurstyClassification(
        n_classes=100, dim=8, n_context=6, burstiness=3, n_labels=8, p_bursty=0.5, zipf_alpha=1.0,
        holdout_classes=20, loss_on_context_labels=True,
    ),
    "bursty_fixed": lambda: BurstyClassification(n_classes=50, dim=8, n_context=4, relabel=False, n_labels=8),
    "repeated": lambda: RepeatedTokens(vocab_size=32, seq_len=48, min_period=3, max_period=12),
    "recall": lambda: AssociativeRecall(n_keys=16, n_values=16, n_filler=8, n_pairs=3, value_len=2, seq_len=40),
    "markov": lambda: MarkovICL(n_states=5, seq_len=40),
}
CASES = [(name, split) for name, make in TASKS.items() for split in ("train", *make().eval_splits)]


def as_np(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in batch.items()}


# ---------------------------------------------------------------------------------------- all tasks
@pytest.mark.parametrize("name,split", CASES)
def test_batch_contract(name: str, split: str) -> None:
    task = ready(TASKS[name]())
    spec = task.spec
    b = task.sample(rng(1), 64, split)
    tok, tgt, mask, src = b["tokens"], b["targets"], b["loss_mask"], b["copy_src"]
    B, T = tok.shape
    assert B == 64 and T <= spec.n_ctx
    assert tok.dtype == tgt.dtype == src.dtype == torch.long and mask.dtype == torch.bool
    assert tgt.shape == mask.shape == src.shape == (B, T)
    assert 0 <= int(tok.min()) and int(tok.max()) < spec.d_vocab
    n_out = spec.d_out or spec.d_vocab
    assert ((tgt[mask] >= 0) & (tgt[mask] < n_out)).all()
    assert mask.any(dim=1).all(), "every sequence must be scored somewhere"
    if spec.d_out == 0:  # next-token tasks
        assert torch.equal(tgt[:, :-1], tok[:, 1:])
        assert not mask[:, -1].any()
    if spec.d_feature:
        assert b["features"].shape == (B, T, spec.d_feature) and b["features"].dtype == torch.float32
        assert b["feature_mask"].dtype == torch.bool
        assert (b["features"][~b["feature_mask"]] == 0).all()
    # copy_src points back (j <= i) at a token equal to the target
    pos = torch.arange(T).expand(B, T)
    has = src >= 0
    assert (src[has] <= pos[has]).all() and (src >= -1).all()
    assert torch.equal(tok.gather(1, src.clamp(min=0))[has], tgt[has])
    # same fixed length across splits and batch sizes
    assert task.sample(rng(2), 3, split)["tokens"].shape[1] == T


@pytest.mark.parametrize("name,split", CASES)
def test_determinism(name: str, split: str) -> None:
    a = ready(TASKS[name]()).sample(rng(5), 16, split)
    b = ready(TASKS[name]()).sample(rng(5), 16, split)
    c = ready(TASKS[name]()).sample(rng(6), 16, split)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["tokens"], c["tokens"]) or not torch.equal(a.get("features", a["tokens"]), c.get("features", c["tokens"]))


@pytest.mark.parametrize("make", [lambda: RepeatedTokens(), lambda: MarkovICL(), lambda: AssociativeRecall()])
def test_unknown_split_rejected(make) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        ready(make()).sample(rng(), 2, "nope")


# ---------------------------------------------------------------------------------------- bursty
def ctx_and_query(b: dict[str, np.ndarray], n_context: int) -> tuple[np.ndarray, np.ndarray]:
    cls = b["classes"][:, 0::2]
    return cls[:, :n_context], cls[:, n_context]


def test_bursty_layout_and_relabel_copy() -> None:
    N, L = 4, 8
    task = ready(BurstyClassification(n_classes=30, dim=8, n_context=N, burstiness=1, n_labels=L))
    b = as_np(task.sample(rng(), 2000))
    T = 2 * N + 1
    assert task.spec.d_vocab == L + 1 and task.spec.d_out == L and task.spec.n_ctx == T and task.spec.d_feature == 8
    tok = b["tokens"]
    assert (tok[:, 0::2] == L).all() and (tok[:, 1::2] < L).all()
    assert (b["feature_mask"][:, 0::2]).all() and not b["feature_mask"][:, 1::2].any()
    assert (b["loss_mask"].sum(1) == 1).all() and b["loss_mask"][:, T - 1].all()
    assert (b["query_pos"] == T - 1).all()
    # p_bursty = 1: the query class is always in context; its label sits at match_pos
    mp = b["match_pos"]
    assert (mp >= 1).all() and (mp % 2 == 1).all()
    rows = np.arange(len(mp))
    assert (tok[rows, mp] == b["targets"][:, T - 1]).all()
    assert (b["classes"][rows, mp - 1] == b["classes"][:, T - 1]).all()
    assert (b["match_exemplar_pos"] == mp - 1).all() and (b["copy_src"][:, T - 1] == mp).all()
    # most recent match: no later context exemplar of the query's class
    ctx, q = ctx_and_query(b, N)
    later = (ctx == q[:, None]) & (np.arange(N)[None, :] > ((mp - 1) // 2)[:, None])
    assert not later.any()
    # distinct classes in a row get distinct labels, equal classes equal labels
    labels = tok[:, 1::2]
    same_cls = ctx[:, :, None] == ctx[:, None, :]
    same_lab = labels[:, :, None] == labels[:, None, :]
    assert (same_cls == same_lab).all()
    # relabel: a class's label is re-drawn per sequence (not a fixed function of the class)
    lab_of_0 = labels[ctx == 0]
    assert len(lab_of_0) > 50 and len(np.unique(lab_of_0)) >= L - 1
    assert abs(np.mean(b["targets"][:, T - 1] == q % L) - 1 / L) < 0.05


def test_bursty_fixed_labels_and_context_loss() -> None:
    N, L = 4, 8
    task = ready(BurstyClassification(n_classes=40, dim=8, n_context=N, relabel=False, n_labels=L, loss_on_context_labels=True))
    b = as_np(task.sample(rng(), 500))
    ctx, q = ctx_and_query(b, N)
    assert (b["tokens"][:, 1::2] == ctx % L).all()
    assert (b["targets"][:, -1] == q % L).all()
    # context exemplar positions are scored with the label that follows them
    assert b["loss_mask"][:, 0::2].all() and not b["loss_mask"][:, 1::2].any()
    assert (b["targets"][:, 0:-1:2] == b["tokens"][:, 1::2]).all()


@pytest.mark.parametrize("N,Bst", [(8, 4), (8, 2), (6, 3), (4, 1)])
def test_bursty_burstiness_counts(N: int, Bst: int) -> None:
    task = ready(BurstyClassification(n_classes=100, dim=4, n_context=N, burstiness=Bst, n_labels=16))
    b = as_np(task.sample(rng(), 300))
    ctx, q = ctx_and_query(b, N)
    for row, qq in zip(ctx, q):
        vals, counts = np.unique(row, return_counts=True)
        assert len(vals) == N // Bst and (counts == Bst).all()
        assert qq in vals
    # match_pos is the query class's most recent context label; copy_src at a context exemplar is the
    # label of the previous exemplar of its class
    last = N - 1 - (ctx == q[:, None])[:, ::-1].argmax(1)
    assert (b["match_pos"] == 2 * last + 1).all()
    src = b["copy_src"][:, 0:-1:2]
    for r in range(50):
        for i in range(N):
            prev = np.flatnonzero(ctx[r, :i] == ctx[r, i])
            assert src[r, i] == (2 * prev[-1] + 1 if len(prev) else -1)
    # the burst is shuffled: the query's copies are not at fixed positions
    first = (ctx == q[:, None]).argmax(1)
    assert len(np.unique(first)) == N - Bst + 1


def test_bursty_iw_split() -> None:
    N, L = 4, 8
    task = ready(BurstyClassification(n_classes=60, dim=4, n_context=N, burstiness=2, n_labels=L, holdout_classes=10))
    b = as_np(task.sample(rng(), 1000, "iw"))
    ctx, q = ctx_and_query(b, N)
    assert not (ctx == q[:, None]).any()
    assert (b["match_pos"] == -1).all() and (b["match_exemplar_pos"] == -1).all() and (b["copy_src"][:, -1] == -1).all()
    assert (b["targets"][:, -1] == q % L).all() and (b["tokens"][:, 1::2] == ctx % L).all()
    assert (q < 50).all() and (ctx < 50).all()  # training classes only
    # context keeps the burstiness structure
    assert all(len(np.unique(r)) == N // 2 for r in ctx)


def test_bursty_ic_holdout_classes_split_and_random_labels() -> None:
    N, L, K, H = 4, 8, 60, 10
    task = ready(BurstyClassification(n_classes=K, dim=4, n_context=N, n_labels=L, holdout_classes=H, relabel=False))
    assert task.eval_splits == ("ic", "iw", "ic_holdout_classes")
    trained = as_np(task.sample(rng(), 2000, "ic"))["classes"][:, 0::2]
    assert trained.max() < K - H and len(np.unique(trained)) == K - H  # "ic": the training classes
    b = as_np(task.sample(rng(), 2000, "ic_holdout_classes"))
    ctx, q = ctx_and_query(b, N)
    assert (ctx >= K - H).all() and (q >= K - H).all()
    assert (b["match_pos"] >= 0).all()
    assert (b["tokens"][np.arange(len(q)), b["match_pos"]] == b["targets"][:, -1]).all()
    # labels are random per sequence even though training uses fixed labels
    assert abs(np.mean(b["targets"][:, -1] == q % L) - 1 / L) < 0.04
    # without holdout, ic classes come from all classes
    task0 = ready(BurstyClassification(n_classes=K, dim=4, n_context=N, n_labels=L))
    c = as_np(task0.sample(rng(), 2000, "ic"))["classes"][:, 0::2]
    assert c.min() < 5 and c.max() >= K - 5


def test_bursty_holdout_never_in_train() -> None:
    K, H = 40, 15
    task = ready(BurstyClassification(n_classes=K, dim=4, n_context=4, burstiness=2, n_labels=8, holdout_classes=H, p_bursty=0.3, zipf_alpha=0.5))
    cls = np.concatenate([as_np(task.sample(rng(s), 500))["classes"] for s in range(4)])
    used = cls[cls >= 0]
    assert used.max() < K - H
    assert len(np.unique(used)) == K - H  # and all training classes do occur


def test_bursty_zipf_skews_class_frequencies() -> None:
    K = 50
    task = ready(BurstyClassification(n_classes=K, dim=4, n_context=4, n_labels=8, p_bursty=0.0, zipf_alpha=1.0))
    b = as_np(task.sample(rng(), 20000))
    ctx, q = ctx_and_query(b, 4)
    p = 1.0 / np.arange(1, K + 1)
    p /= p.sum()
    freq = np.bincount(ctx.ravel(), minlength=K) / ctx.size
    assert np.abs(freq - p).max() < 0.01
    assert freq[0] > 10 * freq[-1]
    qfreq = np.bincount(q, minlength=K) / len(q)
    assert abs(qfreq[0] - p[0]) < 0.015
    # alpha = 0 is uniform
    flat = ready(BurstyClassification(n_classes=K, dim=4, n_context=4, n_labels=8, p_bursty=0.0))
    f2 = np.bincount(as_np(flat.sample(rng(), 20000))["classes"][:, 0::2].ravel(), minlength=K) / (20000 * 5)
    assert np.abs(f2 - 1 / K).max() < 0.005


def test_bursty_zipf_bursty_sequences_still_distinct() -> None:
    # strongly concentrated distribution: without-replacement draws must still give distinct classes
    task = ready(BurstyClassification(n_classes=12, dim=4, n_context=8, n_labels=8, zipf_alpha=3.0))
    b = as_np(task.sample(rng(), 500))
    ctx, q = ctx_and_query(b, 8)
    assert all(len(np.unique(r)) == 8 for r in ctx)
    assert (q == 0).mean() > 0.7  # query drawn from the skewed distribution


def test_bursty_p_bursty_fraction() -> None:
    task = ready(BurstyClassification(n_classes=1600, dim=4, n_context=2, n_labels=8, p_bursty=0.5))
    b = as_np(task.sample(rng(), 4000))
    assert abs((b["match_pos"] >= 0).mean() - 0.5) < 0.04


def test_bursty_gaussian_exemplar_geometry() -> None:
    D, eps = 256, 0.5
    task = ready(BurstyClassification(n_classes=10, dim=D, within_class_noise=eps, n_context=4, burstiness=2, n_labels=8), seed=3)
    b = as_np(task.sample(rng(), 400))
    x = b["features"][:, 0::2]  # [B, N+1, D]
    cls = b["classes"][:, 0::2]
    norms = np.linalg.norm(x, axis=-1)
    assert abs(norms.mean() - 1.0) < 0.05  # (mu + eps eta) / sqrt(1 + eps^2) has unit expected norm
    xn = x / norms[..., None]
    cos = np.einsum("bid,bjd->bij", xn, xn)
    same = cls[:, :, None] == cls[:, None, :]
    off = ~np.eye(5, dtype=bool)[None]
    assert abs(cos[same & off].mean() - 1 / (1 + eps**2)) < 0.05
    assert abs(cos[~same].mean()) < 0.05
    # the class means are fixed by the setup seed
    again = ready(BurstyClassification(n_classes=10, dim=D, within_class_noise=0.0, n_context=4, burstiness=2, n_labels=8), seed=3)
    other = ready(BurstyClassification(n_classes=10, dim=D, within_class_noise=0.0, n_context=4, burstiness=2, n_labels=8), seed=4)
    ba, bo = as_np(again.sample(rng(), 50)), as_np(other.sample(rng(), 50))
    assert np.array_equal(ba["classes"], bo["classes"])  # same rng -> same classes
    assert not np.allclose(ba["features"], bo["features"])  # different seeds -> different means
    xa = ba["features"][:, 0::2].reshape(-1, D)
    ca = ba["classes"][:, 0::2].ravel()
    for k in np.unique(ca):  # eps = 0: every exemplar of a class is its mean
        assert np.allclose(xa[ca == k], xa[ca == k][0])


def _class_cosines(task: BurstyClassification, n: int = 400) -> tuple[float, float, float]:
    """Mean cosine between exemplars of the same class, of different classes, and the smallest feature."""
    b = as_np(task.sample(rng(), n))
    x, cls = b["features"][:, 0::2], b["classes"][:, 0::2]
    xn = x / np.linalg.norm(x, axis=-1, keepdims=True)
    cos = np.einsum("bid,bjd->bij", xn, xn)
    same = cls[:, :, None] == cls[:, None, :]
    off = ~np.eye(x.shape[1], dtype=bool)[None]
    return float(cos[same & off].mean()), float(cos[~same].mean()), float(x.min())


def test_bursty_correlated_geometry_is_non_negative_and_correlated() -> None:
    """Post-ReLU CNN features (the paper's exemplars) are non-negative with strongly correlated classes."""
    kw = dict(n_classes=20, dim=256, within_class_noise=0.5, exemplars_per_class=5, n_context=4, burstiness=2, n_labels=8)
    within_g, between_g, _ = _class_cosines(ready(BurstyClassification(**kw), seed=3))
    within_c, between_c, smallest = _class_cosines(ready(BurstyClassification(geometry="correlated", **kw), seed=3))
    assert smallest >= 0.0 and abs(between_g) < 0.05
    assert 0.4 < between_c < within_c < 1.0  # correlated, yet classes stay distinguishable
    lone = ready(BurstyClassification(geometry="correlated", shared_component=0.0, **kw), seed=3)
    assert _class_cosines(lone)[1] < between_c - 0.1  # the shared component is what correlates them


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(geometry="sphere"), r"geometry='sphere' is not one of"),
        (dict(geometry="correlated", shared_component=-1.0), r"shared_component=-1.0"),
        (dict(n_context=8, burstiness=3), r"burstiness=3 must .*divide n_context=8"),
        (dict(n_classes=10, holdout_classes=9), r"holdout_classes=9"),
        (dict(n_context=8, burstiness=1, n_labels=4), r"n_labels=4"),
        (dict(n_context=4, n_labels=4, p_bursty=0.5), r"n_labels=4 must be >= n_context\+1=5"),
        (dict(p_bursty=1.5), r"p_bursty=1.5"),
        (dict(zipf_alpha=-1.0), r"zipf_alpha=-1.0"),
        (dict(within_class_noise=-0.1), r"within_class_noise=-0.1"),
    ],
)
def test_bursty_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BurstyClassification(**kwargs)


def test_bursty_requires_setup() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        BurstyClassification().sample(rng(), 2)


def paper_task(**kw) -> BurstyClassification:
    """Singh et al. 2024's regime: 2 of 5 labels per sequence, 1 fixed training exemplar of 5, held-out classes."""
    args = dict(n_classes=30, dim=8, n_context=2, n_labels=5, holdout_classes=10, exemplars_per_class=5,
                train_exemplars=1, holdout_label_sets=2, within_class_noise=0.5)
    return ready(BurstyClassification(**{**args, **kw}))


def test_bursty_paper_regime_splits() -> None:
    task = paper_task()
    assert task.eval_splits == ("ic", "iw", "ic_holdout_classes", "ic_holdout_exemplars", "ic_holdout_labels")
    n = 3000
    batches = {s: as_np(task.sample(rng(7), n, s)) for s in ("train", "ic", "ic_holdout_classes", "ic_holdout_exemplars", "ic_holdout_labels")}
    bank = task._table  # [K, 5, D], drawn by setup(seed)

    def exemplar_ids(b):  # which bank row each exemplar position holds
        x, c = b["features"][:, 0::2], b["classes"][:, 0::2]
        d = np.abs(bank[c] - x[:, :, None, :]).sum(-1)  # [n, 3, 5]
        assert (d.min(-1) == 0).all()  # exact bank rows, no per-draw noise
        return d.argmin(-1)

    for split in ("train", "ic", "ic_holdout_labels"):
        b = batches[split]
        assert (exemplar_ids(b) == 0).all(), split  # one fixed exemplar per class ...
        q, m = b["features"][:, -1], b["features"][np.arange(n), b["match_exemplar_pos"]]
        assert np.array_equal(q, m), split  # ... so the query equals its context exemplar exactly
        assert b["classes"][:, 0::2].max() < 20, split
    held_ex = exemplar_ids(batches["ic_holdout_exemplars"])
    assert set(np.unique(held_ex)) == {1, 2, 3, 4}
    assert batches["ic_holdout_exemplars"]["classes"][:, 0::2].max() < 20
    hc = batches["ic_holdout_classes"]
    assert hc["classes"][:, 0::2].min() >= 20 and set(np.unique(exemplar_ids(hc))) == {0, 1, 2, 3, 4}

    # label pairs: training and the held-out eval use disjoint unordered pairs, every label trains
    sets = task.label_sets
    assert sets["train"].shape == (8, 2) and sets["holdout"].shape == (2, 2)
    assert set(np.unique(sets["train"])) == set(range(5))
    def pairs(b):
        return {tuple(sorted(r)) for r in b["tokens"][:, 1::2]}
    train_pairs = {tuple(r) for r in sets["train"]}
    held_pairs = {tuple(r) for r in sets["holdout"]}
    assert pairs(batches["train"]) == pairs(batches["ic"]) == train_pairs
    assert pairs(batches["ic_holdout_labels"]) == held_pairs and not train_pairs & held_pairs
    for b in batches.values():  # the query's label is the label of its context exemplar; both orders occur
        assert (b["tokens"][np.arange(n), b["match_pos"]] == b["targets"][:, -1]).all()
        first = b["tokens"][:, 1]
        for pair in pairs(b):
            rows = np.sort(b["tokens"][:, 1::2], 1).tolist()
            sel = np.array([tuple(r) == pair for r in rows])
            assert len(np.unique(first[sel])) == 2
    # the split is fixed by the seed
    assert np.array_equal(paper_task().label_sets["holdout"], sets["holdout"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(exemplars_per_class=0), r"train_exemplars=1 must be in \[0, 0\].*exemplars_per_class"),
        (dict(train_exemplars=6), r"train_exemplars=6 must be in \[0, 5\]"),
        (dict(holdout_label_sets=10), r"holdout_label_sets=10 must be in \[0, 9\]"),
        (dict(holdout_label_sets=2, relabel=False), r"holdout_label_sets=2 needs relabel=True"),
        (dict(holdout_label_sets=4, n_labels=3), r"holdout_label_sets=4 must be in \[0, 2\]"),
        (dict(holdout_label_sets=2, n_labels=3), r"no split .* leaves every one of the n_labels=3"),
        (dict(exemplars_per_class=-1, train_exemplars=0), r"exemplars_per_class=-1"),
    ],
)
def test_bursty_paper_options_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paper_task(**kwargs)


# ---------------------------------------------------------------------------------------- exemplar files
def exemplar_array(K: int = 7, E: int = 3, D: int = 5) -> np.ndarray:
    a = np.random.default_rng(0).standard_normal((K, E, D)).astype(np.float32)
    a[..., 0] = np.arange(K)[:, None] * 10 + np.arange(E)[None, :]  # identifies (class, exemplar)
    return a


def write(tmp_path, fmt: str, arr: np.ndarray, key: str = "exemplars") -> str:
    path = tmp_path / f"ex.{fmt}"
    if fmt == "npy":
        np.save(path, arr)
    elif fmt == "npz":
        np.savez(path, **{key: arr})
    elif fmt == "h5":
        with h5py.File(path, "w") as f:
            f.create_dataset(key, data=arr)
    else:
        save_file({key: arr}, str(path))
    return str(path)


@pytest.mark.parametrize("fmt", ["npy", "npz", "h5", "safetensors"])
def test_load_exemplars_formats(tmp_path, fmt: str) -> None:
    arr = exemplar_array()
    key = "exemplars" if fmt == "npy" else "emb"
    got = load_exemplars(write(tmp_path, fmt, arr, key), key)
    assert got.dtype == np.float32 and np.array_equal(got, arr)
    if fmt != "npy":
        with pytest.raises(KeyError, match="missing"):
            load_exemplars(write(tmp_path, fmt, arr, key), "missing")


def test_load_exemplars_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_exemplars(tmp_path / "nope.npy")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="suffix"):
        load_exemplars(tmp_path / "x.txt")
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="shape"):
        load_exemplars(tmp_path / "bad.npy")
    np.save(tmp_path / "flat.npy", np.ones((4, 6)))  # [classes, dim] -> one exemplar per class
    assert load_exemplars(tmp_path / "flat.npy").shape == (4, 1, 6)


@pytest.mark.parametrize("fmt", ["npy", "h5", "safetensors"])
def test_bursty_with_user_exemplars(tmp_path, fmt: str) -> None:
    arr = exemplar_array(K=7, E=3, D=5)
    path = write(tmp_path, fmt, arr, "feats")
    task = ready(BurstyClassification(exemplars=path, exemplars_key="feats", within_class_noise=0.0, n_context=4, n_labels=8))
    assert task.n_classes == 7 and task.dim == 5 and task.spec.d_feature == 5
    b = as_np(task.sample(rng(), 300))
    x = b["features"][:, 0::2].reshape(-1, 5)
    cls = b["classes"][:, 0::2].ravel()
    ids = np.rint(x[:, 0]).astype(int)
    k, e = ids // 10, ids % 10
    assert (k == cls).all()
    assert np.array_equal(x, arr[k, e])  # exact rows of the user's array
    assert len(np.unique(e)) == 3  # all exemplars of a class are used
    # held-out exemplars of a user bank: training sees exemplar 0 only, the eval split the others
    split = ready(BurstyClassification(exemplars=path, exemplars_key="feats", within_class_noise=0.0, n_context=4, n_labels=8, train_exemplars=1))
    assert split.eval_splits == ("ic", "iw", "ic_holdout_exemplars")
    for name, want in (("train", {0}), ("ic_holdout_exemplars", {1, 2})):
        xs = as_np(split.sample(rng(), 300, name))["features"][:, 0::2].reshape(-1, 5)
        assert set(np.rint(xs[:, 0]).astype(int) % 10) == want
    with pytest.raises(ValueError, match="exemplars_per_class=2 must be >= 0, and 0 with an exemplars file"):
        BurstyClassification(exemplars=path, exemplars_key="feats", exemplars_per_class=2)
    noisy = ready(BurstyClassification(exemplars=path, exemplars_key="feats", within_class_noise=0.3, n_context=4, n_labels=8))
    xn = as_np(noisy.sample(rng(), 50))["features"][:, 0::2].reshape(-1, 5)
    assert not np.isin(xn[:, 1], arr[..., 1]).any()


# ---------------------------------------------------------------------------------------- repeated tokens
def test_repeated_tokens_structure() -> None:
    task = RepeatedTokens(vocab_size=50, seq_len=64, min_period=4, max_period=24)
    b = as_np(task.sample(rng(), 3000))
    tok, src, per, rs, pre = b["tokens"], b["copy_src"], b["period"], b["repeat_start"], b["prefix_len"]
    B, T = tok.shape
    pos = np.arange(T)[None, :]
    assert ((per >= 4) & (per <= 24)).all() and (rs == pre + per).all()
    assert (pre + 2 * per <= T).all()  # a full second copy always fits
    # every token from repeat_start on repeats the token one period earlier
    rep = pos >= rs[:, None]
    prev = np.take_along_axis(tok, np.clip(pos - per[:, None], 0, None), axis=1)
    assert (tok[rep] == prev[rep]).all()
    # copy_src exactly on the positions whose next token is a repeat
    expected = np.where((pos + 1 >= rs[:, None]) & (pos < T - 1), pos + 1 - per[:, None], -1)
    assert np.array_equal(src, expected)
    # no fixed-position shortcut: period, repeat start and prefix vary across sequences
    assert set(np.unique(per)) == set(range(4, 25))
    assert len(np.unique(rs)) > 30 and len(np.unique(pre)) > 20
    # the position of the first repeated target varies, so "is position i in the repeat" is not positional
    first_copy = (src >= 0).argmax(1)
    assert len(np.unique(first_copy)) > 30
    for i in (10, 30, 50):
        frac = (src[:, i] >= 0).mean()
        assert 0.01 < frac < 0.995
        # and the target at a fixed position is ~uniform over the vocabulary
        counts = np.bincount(b["targets"][:, i], minlength=50)
        assert counts.max() / B < 3 / 50


def test_repeated_tokens_fresh_tokens_are_iid_uniform() -> None:
    V, T = 16, 64
    b = as_np(RepeatedTokens(vocab_size=V, seq_len=T, min_period=4, max_period=24).sample(rng(), 4000))
    tok, rs = b["tokens"], b["repeat_start"]
    fresh = np.arange(T)[None, :] < rs[:, None]  # prefix and first copy
    counts = np.bincount(tok[fresh], minlength=V)
    chi2 = ((counts - counts.mean()) ** 2 / counts.mean()).sum()
    assert chi2 < 50  # df = 15; p ~ 1e-5
    # no dependence between fresh tokens, whatever their position
    for i in range(1, T):
        rows = fresh[:, i]
        n = rows.sum()
        if n >= 100:  # 5 standard errors of a Bernoulli(1/V) frequency
            assert abs((tok[rows, i] == tok[rows, 0]).mean() - 1 / V) < 5 * np.sqrt((1 / V) * (1 - 1 / V) / n), i


def test_repeated_tokens_options_and_validation() -> None:
    task = RepeatedTokens(vocab_size=30, seq_len=40, min_period=5, max_period=20, max_prefix=3, distinct_segment=True)
    b = as_np(task.sample(rng(), 500))
    assert (b["prefix_len"] <= 3).all()
    for t, p, s in zip(b["tokens"], b["prefix_len"], b["period"]):
        seg = t[p : p + s]
        assert len(np.unique(seg)) == s
    uniform = as_np(RepeatedTokens(vocab_size=30, seq_len=40, min_period=20, max_period=20).sample(rng(), 200))
    assert any(len(np.unique(t[p : p + 20])) < 20 for t, p in zip(uniform["tokens"], uniform["prefix_len"]))
    with pytest.raises(ValueError, match="seq_len=40 must be >= 2 \\* max_period=48"):
        RepeatedTokens(seq_len=40, max_period=24)
    with pytest.raises(ValueError, match="min_period=5, max_period=4"):
        RepeatedTokens(min_period=5, max_period=4)
    assert RepeatedTokens(vocab_size=10, seq_len=48).spec.d_vocab == 10


# ---------------------------------------------------------------------------------------- associative recall
def test_associative_recall_structure() -> None:
    F, K, V, n, Lv, T = 8, 16, 16, 3, 2, 40
    task = AssociativeRecall(n_keys=K, n_values=V, n_filler=F, n_pairs=n, value_len=Lv, seq_len=T)
    assert task.spec.d_vocab == F + K + V + 1 and task.spec.n_ctx == T and task.spec.d_out == 0
    b = as_np(task.sample(rng(), 2000))
    tok, tgt, mask = b["tokens"], b["targets"], b["loss_mask"]
    rows = np.arange(len(tok))
    C = T - 2 - Lv
    ctx = tok[:, :C]
    is_key = (ctx >= F) & (ctx < F + K)
    is_val = (ctx >= F + K) & (ctx < F + K + V)
    assert (is_key.sum(1) == n).all() and (is_val.sum(1) == n * Lv).all()
    assert not (ctx == task.query_marker).any()
    for r in range(200):
        keys = ctx[r][is_key[r]]
        assert len(np.unique(keys)) == n  # distinct keys
        kp = np.flatnonzero(is_key[r])
        for p in kp:  # each key is followed by value_len value tokens
            assert is_val[r, p + 1 : p + 1 + Lv].all()
    assert (tok[:, C] == task.query_marker).all()
    qp = b["query_pos"]
    assert (qp == C + 1).all()
    qkey = tok[rows, qp]
    assert ((qkey >= F) & (qkey < F + K)).all()
    # the queried key occurs exactly once in the context, at key_pos, right before the needle
    assert ((ctx == qkey[:, None]).sum(1) == 1).all()
    assert (tok[rows, b["key_pos"]] == qkey).all() and (b["needle_pos"] == b["key_pos"] + 1).all()
    # answers: scored exactly at the value_len predictions, equal to the needle's value tokens
    assert (mask.sum(1) == Lv).all() and mask[:, C + 1 : C + 1 + Lv].all()
    for m in range(Lv):
        assert (tgt[:, C + 1 + m] == tok[rows, b["needle_pos"] + m]).all()
        assert (b["copy_src"][:, C + 1 + m] == b["needle_pos"] + m).all()
    assert ((b["copy_src"] >= 0) == mask).all()
    # needle location and queried pair vary
    assert len(np.unique(b["needle_pos"])) > 20


def test_associative_recall_validation() -> None:
    with pytest.raises(ValueError, match="n_keys=2 must be >= n_pairs=4"):
        AssociativeRecall(n_keys=2, n_pairs=4)
    with pytest.raises(ValueError, match="seq_len=10"):
        AssociativeRecall(seq_len=10, n_pairs=4, value_len=2)


# ---------------------------------------------------------------------------------------- markov
def test_markov_empirical_transitions_follow_matrix() -> None:
    S, T = 4, 4000
    task = MarkovICL(n_states=S, seq_len=T, dirichlet_alpha=1.0)
    b = as_np(task.sample(rng(), 12))
    P, tok = b["transition"], b["tokens"]
    assert np.allclose(P.sum(-1), 1.0, atol=1e-5) and (P >= 0).all()
    assert not np.allclose(P[0], P[1])  # a fresh matrix per sequence
    z = []
    for r in range(len(tok)):
        counts = np.zeros((S, S))
        np.add.at(counts, (tok[r, :-1], tok[r, 1:]), 1)
        n_i = counts.sum(1, keepdims=True)
        ok = n_i[:, 0] >= 100
        phat = counts[ok] / n_i[ok]
        se = np.sqrt(P[r][ok] * (1 - P[r][ok]) / n_i[ok]) + 1e-3
        z.append(np.abs(phat - P[r][ok]) / se)
    z = np.concatenate([x.ravel() for x in z])
    assert len(z) > 100
    assert z.max() < 5.0 and z.mean() < 1.2


def test_markov_logprobs() -> None:
    S, T, a = 3, 60, 0.5
    task = MarkovICL(n_states=S, seq_len=T, dirichlet_alpha=a)
    b = as_np(task.sample(rng(), 64))
    tok, P = b["tokens"], b["transition"]
    rows = np.arange(64)[:, None]
    expect = np.log(P[rows, tok[:, :-1], tok[:, 1:]])
    assert np.allclose(b["transition_logprob"][:, :-1], expect, atol=1e-5)
    assert (b["transition_logprob"][:, -1] == 0).all() and (b["copy_src"] == -1).all()
    # Bayes posterior predictive against a direct count
    for r in range(4):
        for i in (0, 1, 10, T - 2):
            prev = [(tok[r, k], tok[r, k + 1]) for k in range(i)]
            n_i = sum(1 for s, _ in prev if s == tok[r, i])
            n_ij = sum(1 for s, t in prev if s == tok[r, i] and t == tok[r, i + 1])
            assert math.isclose(b["bayes_logprob"][r, i], math.log((n_ij + a) / (n_i + S * a)), rel_tol=1e-5)
    # causal: the values on a prefix do not depend on later tokens
    short = tok[:, :8]
    assert np.allclose(task.bayes_logprob(short)[:, :-1], b["bayes_logprob"][:, :7], atol=1e-5)


def test_markov_bayes_between_oracle_and_uniform() -> None:
    S, T = 4, 256
    b = as_np(MarkovICL(n_states=S, seq_len=T).sample(rng(), 256))
    m = b["loss_mask"]
    oracle = -b["transition_logprob"][m].mean()
    bayes = -b["bayes_logprob"][m].mean()
    assert oracle < bayes < math.log(S)
    late = -b["bayes_logprob"][:, T // 2 : -1].mean() + b["transition_logprob"][:, T // 2 : -1].mean()
    early = -b["bayes_logprob"][:, :16].mean() + b["transition_logprob"][:, :16].mean()
    assert 0 < late < early  # the in-context estimate approaches the oracle


def test_markov_rows_are_dirichlet() -> None:
    S = 6
    P = as_np(MarkovICL(n_states=S, seq_len=2, dirichlet_alpha=1.0).sample(rng(), 3000))["transition"]
    # marginal of Dirichlet(1, ..., 1) is Beta(1, S - 1)
    assert abs(P.mean() - 1 / S) < 0.003
    assert abs(P.var() - (S - 1) / (S**2 * (S + 1))) < 0.001
    assert abs((P < 0.05).mean() - (1 - (1 - 0.05) ** (S - 1))) < 0.01


def test_markov_dirichlet_concentration() -> None:
    sharp = as_np(MarkovICL(n_states=6, seq_len=4, dirichlet_alpha=0.05).sample(rng(), 500))["transition"]
    flat = as_np(MarkovICL(n_states=6, seq_len=4, dirichlet_alpha=50.0).sample(rng(), 500))["transition"]
    assert sharp.max(-1).mean() > 0.8 and flat.max(-1).mean() < 0.3
    assert abs(flat.mean() - 1 / 6) < 0.01
    with pytest.raises(ValueError, match="dirichlet_alpha=0"):
        MarkovICL(dirichlet_alpha=0)
