"""Natural-text DataModule: Hugging Face ``datasets`` in, fixed-length token blocks out.

Pipeline: load (local text / jsonl / parquet files, or a hub dataset, optionally streamed) ->
split the text into training and held-out spans (:func:`split_text`) -> tokenize (a Hugging
Face tokenizer, or a byte-level BPE trained on the training text and cached) -> concatenate
documents separated by an end-of-text token -> cut each part into blocks of ``n_ctx + 1`` tokens
overlapping by one (``tokens = block[:-1]``, ``targets = block[1:]``, every position scored) ->
a fixed held-out set and an endless, shuffled training stream.

Order and sharding (the same rule as ``synthetic_data.TaskStream``): the training stream is one
global sequence of blocks (epoch ``e`` is a permutation of the training blocks seeded by
``(seed, e)``); global batch ``j`` holds stream items ``j*B .. j*B+B-1``; the ``k``-th batch a
rank consumes is global batch ``(start + k) * world + rank`` and DataLoader workers take
interleaved ``k``. Every block is therefore seen exactly once per epoch whatever the number of
ranks and workers, and ``world`` ranks with batch ``B`` see exactly the data of one process with
batch ``world * B``. A resumed run starts at the batches already consumed.

Batches: ``tokens``, ``targets`` long ``[B, n_ctx]``, ``loss_mask`` bool ``[B, n_ctx]``,
``index`` long ``[B]`` (the block's id, for checks).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clamp.text.corpus import check_and_hash, load_cached, save_atomic
from clamp.text.tokenizer import TextTokenizer, load_pretrained, load_trained, train_bpe
from synthetic_data.base import TaskSpec
from synthetic_data.datamodule import TensorDictDataset, _rank_world, train_loader

BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


CHARS_PER_TOKEN = 3  # nominal, only to size the held-out spans (in characters) near eval_group blocks
_WHITESPACE = re.compile(r"\s")


def split_text(docs: list[str], span: int, k: int) -> Iterator[tuple[int, int, int, bool]]:
    """The train / held-out split, in text (so it exists before a tokenizer is trained, and does not
    move with it): ``(doc, start, stop, held)`` pieces in corpus order.

    The corpus (documents joined by one separator) is cut into spans of ``span`` characters, each
    cut moved forward to the next whitespace; every ``k``-th span is held out."""
    pos = 0
    for d, doc in enumerate(docs):
        i = 0
        while True:
            unit = (pos + i) // span
            end = (unit + 1) * span - pos
            m = _WHITESPACE.search(doc, end) if end < len(doc) else None
            cut = m.start() if m else len(doc)
            yield d, i, cut, unit % k == k - 1
            if cut == len(doc):
                break
            i = cut
        pos += len(doc) + 1


def _block_batch(blocks: np.ndarray, index: np.ndarray) -> dict[str, torch.Tensor]:
    """``blocks [B, n_ctx + 1]`` -> the batch contract (next-token targets, every position scored)."""
    b = torch.from_numpy(blocks.astype(np.int64))
    return {
        "tokens": b[:, :-1].contiguous(),
        "targets": b[:, 1:].contiguous(),
        "loss_mask": torch.ones(b.shape[0], b.shape[1] - 1, dtype=torch.bool),
        "index": torch.from_numpy(index.astype(np.int64)),
    }


def _my_batches(start: int, rank_world: tuple[int, int] | None) -> Iterator[int]:
    """Global batch ids this rank / DataLoader worker consumes, in order.

    ``rank_world`` should come from the main process (``train_dataloader`` sets it): inside a
    spawn-started worker the process group is invisible and ``_rank_world()`` says 0 of 1."""
    rank, world = rank_world or _rank_world()
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    k = wid
    while True:
        yield (start + k) * world + rank
        k += nw


class PackedBlockStream(IterableDataset):
    """Endless shuffled stream over packed blocks held in memory (see the module docstring for the order)."""

    def __init__(self, tokens: np.ndarray, block_ids: np.ndarray, n_ctx: int, batch_size: int, seed: int, start: int = 0, rank_world: tuple[int, int] | None = None) -> None:
        if len(block_ids) == 0:
            raise ValueError("no training blocks: the corpus is shorter than one context (lower n_ctx or add text)")
        self.tokens, self.block_ids, self.n_ctx = tokens, block_ids, n_ctx
        self.batch_size, self.seed, self.start, self.rank_world = batch_size, seed, start, rank_world
        self._perm: tuple[int, np.ndarray] | None = None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, self.block_ids[np.random.default_rng([self.seed, 7, epoch]).permutation(len(self.block_ids))])
        return self._perm[1]

    def item(self, g: int) -> int:
        """Block id at position ``g`` of the global stream."""
        n = len(self.block_ids)
        return int(self._epoch_order(g // n)[g % n])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        c, B = self.n_ctx, self.batch_size
        offsets = np.arange(c + 1)
        for j in _my_batches(self.start, self.rank_world):
            ids = np.array([self.item(g) for g in range(j * B, (j + 1) * B)])
            yield _block_batch(self.tokens[ids[:, None] * c + offsets], ids)


class StreamingBlockStream(IterableDataset):
    """Blocks packed on the fly from a streamed ``datasets.IterableDataset``.

    Every rank and worker reads the whole (seeded, shuffled) stream and keeps its own batches, so
    the order and the exactly-once guarantee are those of :class:`PackedBlockStream` (at the cost
    of reading the stream ``world * workers`` times; for very large multi-node runs shard files
    with ``datasets.distributed.split_dataset_by_node`` instead).
    """

    def __init__(self, dataset, tokenizer: TextTokenizer, text_field: str, n_ctx: int, batch_size: int, start: int = 0, rank_world: tuple[int, int] | None = None) -> None:  # noqa: ANN001
        self.dataset, self.tokenizer, self.text_field = dataset, tokenizer, text_field
        self.n_ctx, self.batch_size, self.start, self.rank_world = n_ctx, batch_size, start, rank_world

    def _blocks(self) -> Iterator[np.ndarray]:
        c, buf, epoch = self.n_ctx, [], 0
        eos = self.tokenizer.eos_id
        while True:
            self.dataset.set_epoch(epoch)
            for row in self.dataset:
                ids = self.tokenizer.encode_batch([row[self.text_field]])[0]
                buf.extend(ids + ([eos] if eos is not None else []))
                while len(buf) >= c + 1:
                    yield np.asarray(buf[: c + 1])
                    buf = buf[c:]
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        mine = _my_batches(self.start, self.rank_world)
        want = next(mine)
        batch: list[np.ndarray] = []
        for g, block in enumerate(self._blocks()):
            j = g // self.batch_size
            if j == want:
                batch.append(block)
                if len(batch) == self.batch_size:
                    yield _block_batch(np.stack(batch), np.arange(j * self.batch_size, (j + 1) * self.batch_size))
                    batch, want = [], next(mine)


class TextDataModule(L.LightningDataModule):
    """Language modelling on natural text, with a fixed held-out set and deterministic sharded shuffling.

    Args:
        path: local file, directory or glob (``.txt``/``.md``: text; ``.jsonl``/``.json``: json;
            ``.parquet``), or a Hugging Face hub dataset name (e.g. ``roneneldan/TinyStories``).
        n_ctx: tokens per training sequence.
        batch_size: sequences per step (per rank).
        tokenizer: a Hugging Face tokenizer (local directory or hub name); ``None`` trains a
            byte-level BPE with ``vocab_size`` tokens on the training text.
        vocab_size: size of the BPE trained when ``tokenizer`` is ``None``.
        text_field: the column holding the text (json / parquet / hub datasets).
        sample_by: how plain text files are split into documents: ``line``, ``paragraph``
            (blank-line separated) or ``document`` (whole file).
        name, split: hub dataset config and split.
        streaming: stream the dataset (hub corpora too large to tokenize up front); the
            tokenizer (or BPE) is then trained on the first ``bpe_train_docs`` documents and
            the held-out set is the first ``eval_size`` blocks of ``eval_split``.
        eval_split: hub split for held-out data when ``streaming``.
        eval_fraction: share of the text held out (local / non-streaming data): every
            ``round(1 / eval_fraction)``-th span of ``eval_group * n_ctx * 3`` characters (about
            ``eval_group`` blocks; shorter on a corpus too small for that), cut at whitespace
            (:func:`split_text`). The split is made in text, before tokenizing: the BPE is trained
            on the training text only, and the held-out blocks are cut from the held-out text alone.
        eval_size: held-out sequences used for validation and the emergence probes.
        eval_batch_size: validation batch size.
        seed: fixes the BPE, the held-out split, the shuffling.
        num_workers: DataLoader workers for the training stream.
        cache_dir: where the trained BPE, the tokenized corpus and ``datasets``' own cache
            live (keyed by the corpus files and tokenizer settings); the tokenizer is also
            copied into the run folder at the start of fit.
        shuffle_buffer: buffer of the streamed shuffle.
    """

    eval_split_names = ("heldout",)
    multiprocessing_context: str | None = None  # how train workers start (None: torch's default), e.g. "spawn"

    def __init__(
        self,
        path: str,
        n_ctx: int = 256,
        batch_size: int = 16,
        tokenizer: str | None = None,
        vocab_size: int = 2048,
        text_field: str = "text",
        sample_by: Literal["line", "paragraph", "document"] = "paragraph",
        name: str | None = None,
        split: str = "train",
        streaming: bool = False,
        eval_split: str = "validation",
        eval_fraction: float = 0.05,
        eval_group: int = 16,
        eval_size: int = 256,
        eval_batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str = "runs/.text_cache",
        shuffle_buffer: int = 10_000,
        bpe_train_docs: int = 100_000,
    ) -> None:
        super().__init__()
        if n_ctx < 2 or batch_size <= 0 or eval_size <= 0 or eval_batch_size <= 0:
            raise ValueError(f"TextDataModule: need n_ctx >= 2 and positive sizes, got n_ctx={n_ctx}, batch_size={batch_size}, eval_size={eval_size}, eval_batch_size={eval_batch_size}")
        if not 0 < eval_fraction < 1:
            raise ValueError(f"TextDataModule.eval_fraction={eval_fraction} must be in (0, 1)")
        if sample_by not in ("line", "paragraph", "document"):
            raise ValueError(f"TextDataModule.sample_by={sample_by!r}; valid: 'line', 'paragraph', 'document'")
        self.path, self.n_ctx, self.batch_size = path, n_ctx, batch_size
        self.tokenizer_name, self.vocab_size, self.text_field, self.sample_by = tokenizer, vocab_size, text_field, sample_by
        self.name, self.split, self.streaming, self.eval_split = name, split, streaming, eval_split
        self.eval_fraction, self.eval_group, self.eval_size, self.eval_batch_size = eval_fraction, eval_group, eval_size, eval_batch_size
        self.seed, self.num_workers, self.shuffle_buffer, self.bpe_train_docs = seed, num_workers, shuffle_buffer, bpe_train_docs
        self.cache_dir = Path(cache_dir)
        self.files = self._local_files(path)
        if streaming and self.files is not None:
            raise ValueError(f"TextDataModule.streaming=True is for hub datasets; {path!r} is local (local files are tokenized once and cached, set streaming: false)")
        self._prepare()

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _local_files(path: str) -> list[str] | None:
        p = Path(path)
        if p.is_dir():
            files = sorted(str(f) for f in p.rglob("*") if f.suffix in BUILDERS)
        elif any(ch in path for ch in "*?["):
            files = sorted(glob.glob(path, recursive=True))
        elif p.exists():
            files = [str(p)]
        elif p.suffix in BUILDERS or path.startswith(("/", "./", "../", "~")):  # meant a local file: fail now, not after hub retries
            raise FileNotFoundError(f"TextDataModule.path={path!r}: no such file or folder (hub datasets are named like 'roneneldan/TinyStories')")
        else:
            return None  # a hub dataset name
        if not files:
            raise FileNotFoundError(f"TextDataModule.path={path!r} holds no {sorted(BUILDERS)} files")
        kinds = {BUILDERS.get(Path(f).suffix) for f in files}
        if None in kinds or len(kinds) != 1:
            raise ValueError(f"TextDataModule.path={path!r}: files must share one of the formats {sorted(BUILDERS)}, got suffixes {sorted({Path(f).suffix for f in files})}")
        return files

    def _load(self, split: str | None = None, streaming: bool = False):  # noqa: ANN202 (datasets.Dataset | IterableDataset)
        import datasets

        datasets.disable_progress_bars()
        cache = str(self.cache_dir / "datasets")
        if self.files is not None:
            builder = BUILDERS[Path(self.files[0]).suffix]
            kw = {"sample_by": self.sample_by} if builder == "text" else {}
            try:  # the Arrow cache lives in the content-keyed folder: datasets' own key is size + mtime
                ds = datasets.load_dataset(builder, data_files=self.files, split="train", cache_dir=str(self.cache / "datasets"), streaming=streaming, **kw)
            except datasets.exceptions.DatasetGenerationError as e:
                cause = e.__cause__ or e.__context__ or e
                raise ValueError(f"TextDataModule.path={self.path!r}: cannot read it as {builder}: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") from None
        else:
            ds = datasets.load_dataset(self.path, self.name, split=split or self.split, cache_dir=cache, streaming=streaming)
        if self.text_field not in (ds.column_names or [self.text_field]):
            raise KeyError(f"TextDataModule.text_field={self.text_field!r} is not a column of {self.path!r}; columns: {ds.column_names}")
        return ds

    def _key(self) -> str:
        corpus = check_and_hash(self.files) if self.files else [self.path, self.name, self.split]  # by content: an edit keeping size and mtime changes the key
        settings = [corpus, self.tokenizer_name, self.vocab_size, self.text_field, self.sample_by, self.seed, self.streaming]
        if not self.streaming:  # the BPE and the tokens follow the text split (v2: the BPE sees the training text only)
            settings += ["split-v2", self.eval_fraction, self.eval_group, self.n_ctx]
        return hashlib.sha1(json.dumps(settings, default=str).encode()).hexdigest()[:16]

    def _prepare(self) -> None:
        """Tokenizer and (unless streaming) the packed corpus, computed once and cached by content key.

        A file lock makes concurrent processes (DDP ranks started together) wait for the first one
        instead of training the BPE twice.
        """
        self.cache = self.cache_dir / self._key()
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(self.cache / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._prepare_locked()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _prepare_locked(self) -> None:
        if self.streaming:
            self._dataset = self._load(streaming=True).shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            self.tokenizer = self._tokenizer(lambda: (r[self.text_field] for _, r in zip(range(self.bpe_train_docs), self._dataset)))
            return
        docs = list(self._load()[self.text_field])
        span, k = self._split_unit(docs)
        self.tokenizer = self._tokenizer(lambda: (docs[d][a:b] for d, a, b, held in split_text(docs, span, k) if not held))
        parts = [self._tokens_cached(docs, span, k, held) for held in (False, True)]
        n_train, c = len(parts[0]), self.n_ctx
        self.tokens = np.concatenate(parts)  # the training text, then the held-out text
        self.train_blocks = np.arange(max(0, (n_train - 1) // c))
        self.eval_blocks = np.arange(-(-n_train // c), (len(self.tokens) - 1) // c)  # wholly inside the held-out text
        if len(self.eval_blocks) == 0:
            raise ValueError(f"TextDataModule: the corpus ({len(self.tokens)} tokens) is too small to hold out a block at n_ctx={self.n_ctx}")

    def _split_unit(self, docs: list[str]) -> tuple[int, int]:
        """(characters per split span, every how many spans one is held out): spans of about
        ``eval_group`` blocks, shorter on a corpus too small to hold ``k`` of them (so one is held out)."""
        k = max(2, round(1 / self.eval_fraction))
        chars = sum(len(d) + 1 for d in docs)
        return max(1, min(self.eval_group * self.n_ctx * CHARS_PER_TOKEN, chars // k)), k

    def _tokens_cached(self, docs: list[str], span: int, k: int, held: bool) -> np.ndarray:
        """The tokens of the training (or held-out) pieces, end-of-text after each document's last piece."""
        path = self.cache / ("heldout_tokens.npy" if held else "train_tokens.npy")
        tokens = load_cached(path)
        if tokens is not None:
            return tokens
        eos = [] if self.tokenizer.eos_id is None else [self.tokenizer.eos_id]
        pieces = [(docs[d][a:b], b == len(docs[d])) for d, a, b, h in split_text(docs, span, k) if h == held]
        ids: list[int] = []
        for start in range(0, len(pieces), 1000):
            batch = pieces[start : start + 1000]
            for piece, (_, ends) in zip(self.tokenizer.encode_batch([t for t, _ in batch]), batch):
                ids.extend(piece + (eos if ends else []))
        tokens = np.asarray(ids, dtype=np.uint16 if self.tokenizer.vocab_size <= 2**16 else np.uint32)
        save_atomic(path, tokens)
        return tokens

    def _tokenizer(self, texts) -> TextTokenizer:  # noqa: ANN001 (callable returning an iterable of str)
        if self.tokenizer_name is not None:
            return load_pretrained(self.tokenizer_name)
        path = self.cache / "tokenizer.json"
        if path.exists():
            try:
                return load_trained(path)
            except Exception as e:  # noqa: BLE001 (tokenizers raises a bare Exception on a corrupt file)
                warnings.warn(f"cached tokenizer {path} is unreadable ({str(e).splitlines()[0]}); retraining it", stacklevel=2)
        return train_bpe(texts(), self.vocab_size, path)

    # ------------------------------------------------------------------ the contract
    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(d_vocab=self.tokenizer.vocab_size, n_ctx=self.n_ctx)

    def eval_set(self, split: str = "heldout") -> dict[str, torch.Tensor]:
        """The fixed held-out sequences (the same tensors on every call, rank and resume)."""
        if split != "heldout":
            raise KeyError(f"unknown eval split {split!r}; valid: {list(self.eval_split_names)}")
        if getattr(self, "_eval", None) is None:
            if self.streaming:
                stream = StreamingBlockStream(self._load(self.eval_split, streaming=True), self.tokenizer, self.text_field, self.n_ctx, self.eval_size, rank_world=(0, 1))
                self._eval = next(iter(stream))
            else:
                ids = self.eval_blocks[: self.eval_size]
                self._eval = _block_batch(self.tokens[ids[:, None] * self.n_ctx + np.arange(self.n_ctx + 1)], ids)
        return self._eval

    def train_stream(self, start: int = 0, rank_world: tuple[int, int] | None = None) -> IterableDataset:
        """The training stream from global batch ``start`` (``rank_world`` overrides the process group, for tests)."""
        if self.streaming:
            return StreamingBlockStream(self._dataset, self.tokenizer, self.text_field, self.n_ctx, self.batch_size, start, rank_world)
        return PackedBlockStream(self.tokens, self.train_blocks, self.n_ctx, self.batch_size, self.seed, start, rank_world)

    def setup(self, stage: str) -> None:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.logger is None:  # no run folder (logger: false): nothing to copy
            return
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if trainer.is_global_zero and log_dir:
            self.tokenizer.save(Path(log_dir) / "tokenizer")  # the run folder holds the exact tokenizer

    def _consumed_batches(self) -> int:
        trainer = getattr(self, "trainer", None)
        return 0 if trainer is None else trainer.global_step * trainer.accumulate_grad_batches

    def train_dataloader(self) -> DataLoader:
        """The rank is taken here, in the main process, and pickled to the workers with the stream."""
        stream = self.train_stream(self._consumed_batches(), rank_world=_rank_world())
        return train_loader(stream, self.num_workers, self.multiprocessing_context)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(TensorDictDataset(self.eval_set()), batch_size=self.eval_batch_size, shuffle=False)]

    def describe(self) -> str:
        """One line for logs: corpus size, vocabulary, blocks."""
        if self.streaming:
            return f"{self.path} (streamed), vocab {self.tokenizer.vocab_size}, n_ctx {self.n_ctx}"
        return f"{self.path}: {len(self.tokens)} tokens, vocab {self.tokenizer.vocab_size}, {len(self.train_blocks)} train / {len(self.eval_blocks)} held-out blocks of {self.n_ctx}"

