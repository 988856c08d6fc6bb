"""Tokenizers for natural text: a Hugging Face tokenizer by name/path, or a byte-level BPE trained on the corpus.

Both are wrapped in :class:`TextTokenizer` (``encode_batch``, ``vocab_size``, ``eos_id``, ``save``),
so the DataModule never branches on where the tokenizer came from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

EOS = "<|endoftext|>"


class TextTokenizer:
    """Either a ``tokenizers.Tokenizer`` (trained here) or a ``transformers`` tokenizer (loaded)."""

    def __init__(self, backend, *, hf: bool) -> None:  # noqa: ANN001 (tokenizers.Tokenizer | PreTrainedTokenizerBase)
        self.backend, self.hf = backend, hf

    @property
    def vocab_size(self) -> int:
        return len(self.backend) if self.hf else self.backend.get_vocab_size()

    @property
    def eos_id(self) -> int | None:
        return self.backend.eos_token_id if self.hf else self.backend.token_to_id(EOS)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.hf:
            return self.backend(texts, add_special_tokens=False)["input_ids"]
        return [e.ids for e in self.backend.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids)

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer to ``directory`` (``tokenizer.json``, or the HF tokenizer files)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        if self.hf:
            self.backend.save_pretrained(str(directory))
        else:
            self.backend.save(str(Path(directory) / "tokenizer.json"))


def load_pretrained(name_or_path: str) -> TextTokenizer:
    """A ``transformers`` tokenizer (local directory, or a hub name on a machine that reaches it).

    A name that can only be a path (absolute, ``./``, ``~``, or more than one ``/``) and does not
    exist fails as "not found" instead of transformers' "Repo id must be in the form ..."."""
    from transformers import AutoTokenizer

    local = Path(name_or_path).expanduser()
    if not local.exists() and (name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") > 1):
        raise FileNotFoundError(f"TextDataModule.tokenizer={name_or_path!r}: not found: {local} (hub tokenizers are named like 'gpt2' or 'org/name')")
    try:
        return TextTokenizer(AutoTokenizer.from_pretrained(str(local) if local.exists() else name_or_path), hf=True)
    except OSError as e:
        where = f"the folder {local}" if local.exists() else "not a local folder, and the hub"
        raise OSError(f"TextDataModule.tokenizer={name_or_path!r}: {where} gave no tokenizer: {str(e).splitlines()[0]}") from None


def train_bpe(texts: Iterable[str], vocab_size: int, path: Path, min_frequency: int = 2) -> TextTokenizer:
    """Train a byte-level BPE (GPT-2 style) on ``texts`` and save it as ``path`` (tokenizer.json)."""
    from tokenizers import ByteLevelBPETokenizer

    if vocab_size < 257 + 1:
        raise ValueError(f"TextDataModule.vocab_size={vocab_size}: a byte-level BPE needs at least 258 (256 bytes + {EOS} + merges)")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_batches(texts), vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS], show_progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    bpe.save(str(tmp))
    os.replace(tmp, path)  # atomic: a kill mid-write leaves no half tokenizer.json behind
    return load_trained(path)


def load_trained(path: Path) -> TextTokenizer:
    from tokenizers import Tokenizer

    return TextTokenizer(Tokenizer.from_file(str(path)), hf=False)


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
