"""Natural-text DataModule: local files in three formats, BPE cached, exact packing, exactly-once sharding."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from clamp.text import TextDataModule
from clamp.text.datamodule import StreamingBlockStream, split_text

WORDS = "in the beginning god created heaven and earth was without form void darkness upon face of deep spirit moved waters".split()


def corpus(n_docs: int = 120, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) for _ in range(n_docs)]


@pytest.fixture(scope="module")
def text_dm(tmp_path_factory: pytest.TempPathFactory) -> TextDataModule:
    root = tmp_path_factory.mktemp("text")
    (root / "kjv.txt").write_text("\n\n".join(corpus()))
    return TextDataModule(str(root / "kjv.txt"), n_ctx=16, batch_size=4, vocab_size=300, eval_size=8, cache_dir=str(root / "cache"))


def test_blocks_pack_the_corpus_exactly(text_dm: TextDataModule) -> None:
    dm = text_dm
    assert dm.spec.d_vocab == 300 and dm.spec.n_ctx == 16
    eos = dm.tokenizer.eos_id
    assert int((dm.tokens == eos).sum()) == 120  # one end-of-text per paragraph
    assert dm.tokenizer.decode(dm.tokens[: np.flatnonzero(dm.tokens == eos)[0]].tolist()) == corpus()[0]
    ev = dm.eval_set()
    assert ev["tokens"].shape == (8, 16) and ev["loss_mask"].all()
    assert torch.equal(ev["tokens"][:, 1:], ev["targets"][:, :-1])
    for row, b in zip(ev["tokens"], ev["index"]):
        assert torch.equal(row, torch.from_numpy(dm.tokens[int(b) * 16 : int(b) * 16 + 16].astype(np.int64)))
    assert not set(dm.train_blocks) & set(dm.eval_blocks)
    n_train = len(np.load(dm.cache / "train_tokens.npy"))
    assert (dm.train_blocks[-1] + 1) * 16 + 1 <= n_train <= dm.eval_blocks[0] * 16  # no block crosses the split
    assert len(dm.train_blocks) + len(dm.eval_blocks) >= (len(dm.tokens) - 1) // 16 - 1  # only the one block across it is lost
    assert 0.02 < len(dm.eval_blocks) / (len(dm.tokens) / 16) < 0.12  # eval_fraction 0.05 of the text


def test_the_split_is_made_in_text_and_covers_it_exactly() -> None:
    docs = corpus(40)
    pieces = list(split_text(docs, span=60, k=4))
    for d, doc in enumerate(docs):
        mine = [(a, b) for e, a, b, _ in pieces if e == d]
        assert mine[0][0] == 0 and mine[-1][1] == len(doc) and all(b == a2 for (_, b), (a2, _) in zip(mine, mine[1:]))
        assert all(b == len(doc) or doc[b].isspace() for _, b in mine)  # cut at whitespace only
    held = sum(b - a for _, a, b, h in pieces if h) / sum(b - a for _, a, b, _ in pieces)
    assert 0.15 < held < 0.35  # every 4th span


def test_the_bpe_never_sees_the_held_out_text(tmp_path: Path) -> None:
    """Issue 18.7: scrambling every held-out letter (whitespace kept, so the split is the same) leaves
    the trained BPE and the training tokens unchanged; scrambling a training letter changes them."""
    docs = corpus()
    n_ctx, group, k = 16, 16, 20  # TextDataModule's defaults: eval_fraction 0.05, eval_group 16
    pieces = list(split_text(docs, span=min(group * n_ctx * 3, sum(len(d) + 1 for d in docs) // k), k=k))

    def scrambled(which: bool) -> list[str]:
        out = [list(doc) for doc in docs]
        for d, a, b, held in pieces:
            if held == which:
                out[d][a:b] = ["q" if c.isalpha() else c for c in docs[d][a:b]]
        return ["".join(doc) for doc in out]

    def build(texts: list[str], name: str) -> TextDataModule:
        (tmp_path / f"{name}.txt").write_text("\n\n".join(texts))
        return TextDataModule(str(tmp_path / f"{name}.txt"), n_ctx=n_ctx, vocab_size=300, eval_size=8, cache_dir=str(tmp_path / "cache"))

    base, held_scrambled, train_scrambled = build(docs, "a"), build(scrambled(True), "b"), build(scrambled(False), "c")
    assert base.cache != held_scrambled.cache  # other text, other cache: the equality below is not a cache hit
    train = lambda dm: np.load(dm.cache / "train_tokens.npy")  # noqa: E731
    assert base.tokenizer.backend.get_vocab() == held_scrambled.tokenizer.backend.get_vocab()
    assert np.array_equal(train(base), train(held_scrambled))
    assert not np.array_equal(np.load(base.cache / "heldout_tokens.npy"), np.load(held_scrambled.cache / "heldout_tokens.npy"))
    assert base.tokenizer.backend.get_vocab() != train_scrambled.tokenizer.backend.get_vocab()


def _indices(stream, n_batches: int, workers: int) -> list[list[int]]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    out = []
    for batch, _ in zip(loader, range(n_batches)):
        out.append(batch["index"].tolist())
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_see_every_block_once_and_match_one_big_batch(text_dm: TextDataModule, workers: int) -> None:
    dm = text_dm
    n = len(dm.train_blocks)
    steps = -(-n // 8) + 2  # a little over one epoch at a global batch of 8
    ranks = [_indices(dm.train_stream(rank_world=(r, 2)), steps, workers) for r in (0, 1)]
    dm.batch_size = 8
    try:
        single = _indices(dm.train_stream(rank_world=(0, 1)), steps, 0)
    finally:
        dm.batch_size = 4
    for k in range(steps):  # 2 ranks x batch 4 == 1 process x batch 8, step by step
        assert ranks[0][k] + ranks[1][k] == single[k]
    stream = [i for batch in single for i in batch]
    assert sorted(stream[:n]) == sorted(dm.train_blocks.tolist())  # first epoch: each block exactly once
    assert stream[:n] != sorted(stream[:n])  # and shuffled
    assert len(set(stream[n:])) == len(stream[n:])  # the second epoch starts a fresh permutation
    resumed = _indices(dm.train_stream(start=3, rank_world=(1, 2)), 2, 0)
    assert resumed == ranks[1][3:5]  # a resumed run continues the same stream


def test_bpe_is_cached_and_formats_and_hf_tokenizers_agree(text_dm: TextDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clamp.text.datamodule as mod

    monkeypatch.setattr(mod, "train_bpe", lambda *a, **k: pytest.fail("the cached BPE should have been reused"))
    again = TextDataModule(text_dm.path, n_ctx=16, batch_size=4, vocab_size=300, eval_size=8, cache_dir=str(text_dm.cache_dir))
    assert np.array_equal(again.tokens, text_dm.tokens)
    monkeypatch.undo()

    docs = corpus()
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in docs))
    from transformers import PreTrainedTokenizerFast

    hf_dir = tmp_path / "hf_tok"
    PreTrainedTokenizerFast(tokenizer_object=text_dm.tokenizer.backend, eos_token="<|endoftext|>").save_pretrained(hf_dir)
    js = TextDataModule(str(tmp_path / "c.jsonl"), n_ctx=16, text_field="body", tokenizer=str(hf_dir), eval_size=8, cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(js.tokens, text_dm.tokens)  # json + HF tokenizer == text + trained BPE

    import datasets

    datasets.Dataset.from_dict({"text": docs}).to_parquet(str(tmp_path / "c.parquet"))
    pq = TextDataModule(str(tmp_path / "c.parquet"), n_ctx=16, tokenizer=str(hf_dir), eval_size=8, cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(pq.tokens, text_dm.tokens)

    with pytest.raises(KeyError, match="text_field='text'.*body"):
        TextDataModule(str(tmp_path / "c.jsonl"), n_ctx=16, tokenizer=str(hf_dir), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="sample_by='words'"):
        TextDataModule(text_dm.path, sample_by="words")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="streaming=True is for hub datasets"):
        TextDataModule(text_dm.path, streaming=True, cache_dir=str(tmp_path / "cache"))


def test_streamed_blocks_follow_the_same_sharding_rule(text_dm: TextDataModule, tmp_path: Path) -> None:
    import datasets

    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in corpus()))
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "s.jsonl"), split="train", streaming=True, cache_dir=str(tmp_path / "c")).shuffle(seed=0, buffer_size=50)

    def stream(rank: int, world: int, bs: int) -> list[dict[str, torch.Tensor]]:
        it = iter(StreamingBlockStream(ds, text_dm.tokenizer, "text", 16, bs, rank_world=(rank, world)))
        return [next(it) for _ in range(20)]

    r0, r1, single = stream(0, 2, 4), stream(1, 2, 4), stream(0, 1, 8)
    for a, b, s in zip(r0, r1, single):
        assert torch.equal(torch.cat([a["tokens"], b["tokens"]]), s["tokens"])
    assert torch.cat([s["index"] for s in single]).tolist() == list(range(160))
    # consecutive blocks overlap by one token: the stream is packed without gaps
    assert single[0]["tokens"][1, 0] == single[0]["targets"][0, -1]


def test_a_missing_local_file_fails_at_once_instead_of_asking_the_hub(tmp_path: Path) -> None:
    """A path that names a local file is never sent to the hub (whose retries take ~40 s offline)."""
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        TextDataModule(path=str(tmp_path / "missing.txt"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        TextDataModule(path="data/missing.jsonl", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize(("content", "cause"), [(b"", "the file is empty"), (b" \n\n ", "only whitespace"), (b"abc\0\x01\x02", "binary file"), (b"caf\xe9 au lait", "not UTF-8 text .byte 0xe9 at offset 3")])
def test_unreadable_corpus_files_fail_naming_the_file_and_the_cause(tmp_path: Path, content: bytes, cause: str) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=f"{bad}: .*{cause}"):
        TextDataModule(str(bad), n_ctx=16, vocab_size=300, cache_dir=str(tmp_path / "cache"))


def test_the_cli_shows_the_data_modules_reason_not_the_union_dump() -> None:
    from clamp.cli import one_line

    wall = ValueError("Does not validate against any of the Union subtypes\nSubtypes: [A, B]\nErrors:\n  - TextDataModule.path: x.txt: the file is empty\n"
                      "  - Expected a <class 'NoneType'>\nGiven value type: <class 'Namespace'>\nGiven value: Namespace(path='x.txt')")  # fmt: skip
    assert one_line(wall) == "TextDataModule.path: x.txt: the file is empty"


def test_a_missing_local_tokenizer_folder_is_not_found_not_a_bad_hub_id(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("\n\n".join(corpus(20)))
    with pytest.raises(FileNotFoundError, match=f"not found: {tmp_path / 'no_tok'}"):
        TextDataModule(str(tmp_path / "a.txt"), n_ctx=16, tokenizer=str(tmp_path / "no_tok"), cache_dir=str(tmp_path / "cache"))


def test_the_token_cache_is_keyed_by_content_and_a_truncated_cache_is_rebuilt(tmp_path: Path) -> None:
    import os

    f, cache = tmp_path / "c.txt", str(tmp_path / "cache")
    f.write_text("\n\n".join(corpus()))
    first = TextDataModule(str(f), n_ctx=16, vocab_size=300, eval_size=8, cache_dir=cache)
    st = f.stat()
    f.write_text("\n\n".join(corpus(seed=1))[: st.st_size].ljust(st.st_size))  # same size, same mtime, other text
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    edited = TextDataModule(str(f), n_ctx=16, vocab_size=300, eval_size=8, cache_dir=cache)
    assert edited.cache != first.cache and not np.array_equal(edited.tokens[:200], first.tokens[:200])

    tok_file = edited.cache / "train_tokens.npy"
    tok_file.write_bytes(tok_file.read_bytes()[:100])  # a kill during the first tokenization (before atomic writes)
    with pytest.warns(UserWarning, match=f"token cache {tok_file} is unreadable"):
        again = TextDataModule(str(f), n_ctx=16, vocab_size=300, eval_size=8, cache_dir=cache)
    assert np.array_equal(again.tokens, edited.tokens) and np.array_equal(np.load(tok_file), edited.tokens[: len(np.load(tok_file))])
    assert not [p for p in edited.cache.iterdir() if p.name.endswith(".tmp")]  # written through a temporary file, renamed
