"""Natural text: Hugging Face ``datasets`` corpora, tokenizers (pretrained or a locally trained BPE), packed blocks."""

from clamp.text.datamodule import PackedBlockStream, StreamingBlockStream, TextDataModule
from clamp.text.tokenizer import TextTokenizer, load_pretrained, train_bpe

__all__ = ["PackedBlockStream", "StreamingBlockStream", "TextDataModule", "TextTokenizer", "load_pretrained", "train_bpe"]
