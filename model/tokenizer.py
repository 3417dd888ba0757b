"""WordPiece tokenizers (Hugging Face `tokenizers`): load a checkpoint's, or train one."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

from model.errors import ModelError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def checkpoint_max_len(directory: Path, default: int) -> int:
    """sentence-transformers records the length the model was trained for (256 for MiniLM)."""
    path = Path(directory) / "sentence_bert_config.json"
    if path.exists():
        try:
            return int(json.loads(path.read_text())["max_seq_length"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{path}: no usable max_seq_length ({exc})") from None
    return default


def configure(tokenizer: Tokenizer, max_len: int) -> Tokenizer:
    """Truncate at max_len word pieces; no padding: the server pads each batch itself."""
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.no_padding()
    return tokenizer


def lower_case_first(tokenizer: Tokenizer) -> Tokenizer:
    """Lower-case the text before the tokenizer's own normaliser, as sentence-transformers'
    do_lower_case does before it calls the tokenizer."""
    own = tokenizer.normalizer
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([own] if own is not None else []))
    return tokenizer


def load_tokenizer(path: Path, max_len: int) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise ModelError(f"{path}: not a readable tokenizer.json ({exc})") from None
    return configure(tokenizer, max_len)


def train_wordpiece(texts: Iterable[str], vocab_size: int, max_len: int) -> Tokenizer:
    """A BERT-style uncased WordPiece tokenizer trained on the given texts, the same on every run."""
    texts = list(texts)
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    # The trainer numbers "##x" continuation pieces in hash-map order and breaks ties between
    # merges by those numbers, so runs can learn different vocabularies (huggingface/tokenizers
    # #1794). Declared up front, sorted, they get fixed numbers; the vocabulary is then rebuilt
    # so that they are ordinary word pieces, not special tokens.
    continuation: set[str] = set()
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            continuation.update("##" + ch for ch in word[1:])
    special_tokens = SPECIAL_TOKENS + sorted(continuation)
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=special_tokens, min_frequency=1)
    draft = Tokenizer(WordPiece(unk_token="[UNK]"))
    draft.normalizer, draft.pre_tokenizer = normalizer, pre_tokenizer
    draft.train_from_iterator(texts, trainer=trainer)
    tokenizer = Tokenizer(WordPiece(draft.get_vocab(), unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return configure(tokenizer, max_len)
