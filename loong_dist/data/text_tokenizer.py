"""The text tokenizer: a sentencepiece model trained on the corpus captions, plus the special
tokens the sequence layout needs.

Ids 0-3 are fixed by training options: <pad>=0, <unk>=1, <s>=2 (BOS), </s>=3 (EOS); then
<bov>=4 and <eov>=5 (begin/end of video) as control symbols, then 256 byte-fallback pieces and
the learned pieces. Training keeps text exactly as written (no normalisation, spaces kept), so
`decode(encode(s)) == s` for any Unicode string: unseen characters fall back to bytes.

The sequence layout (the AR model's vocabulary) puts video ids after `vocab_size`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable

import sentencepiece as spm

from loong_dist.errors import TextTokenizerError
from loong_dist.io.storage import Storage

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
BOV, EOV = "<bov>", "<eov>"
CONTROL_SYMBOLS = (BOV, EOV)


def train_text_tokenizer(captions: Iterable[str], vocab_size: int, model_type: str = "bpe") -> bytes:
    """Train sentencepiece on captions; returns the serialised model.

    When the captions cannot fill `vocab_size` pieces (a small corpus), the vocabulary is
    smaller than asked and a warning says so; the model's own `vocab_size` is authoritative.
    """
    captions = [c for c in captions if c.strip()]
    if not captions:
        raise TextTokenizerError("no non-empty captions to train the text tokenizer on")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(captions), model_writer=model,
            vocab_size=vocab_size, model_type=model_type,
            pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
            control_symbols=list(CONTROL_SYMBOLS),
            byte_fallback=True, character_coverage=1.0,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            split_digits=True, hard_vocab_limit=False, num_threads=1,
            minloglevel=2)
    except RuntimeError as e:
        raise TextTokenizerError(f"sentencepiece training failed: {str(e).strip().splitlines()[-1]}") from None
    tok = TextTokenizer(model.getvalue())
    if tok.vocab_size < vocab_size:
        log.warning("text.vocab_size=%d asked, but %d captions only support %d pieces: trained %d",
                    vocab_size, len(captions), tok.vocab_size, tok.vocab_size)
    return model.getvalue()


class TextTokenizer:
    """sentencepiece model + the layout's special ids. Encode/decode text <-> list of ids."""

    def __init__(self, model_proto: bytes, name: str = "<text tokenizer>"):
        self.name = name
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError, TypeError):
            raise TextTokenizerError(f"{name}: not a sentencepiece model") from None
        self.model_proto = bytes(model_proto)
        self.pad_id, self.unk_id = self.sp.pad_id(), self.sp.unk_id()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.bov_id, self.eov_id = self.sp.piece_to_id(BOV), self.sp.piece_to_id(EOV)
        if min(self.pad_id, self.bos_id, self.eos_id) < 0 or self.bov_id == self.unk_id or self.eov_id == self.unk_id:
            raise TextTokenizerError(f"{name}: sentencepiece model lacks the special tokens "
                                     f"({PAD} {BOS} {EOS} {BOV} {EOV}); train it with data_prep.text_tokenizer")

    @classmethod
    def load(cls, uri: str, storage: Storage | None = None) -> "TextTokenizer":
        return cls((storage or Storage()).read_bytes(uri), name=str(uri))

    def save(self, uri: str, storage: Storage | None = None) -> None:
        (storage or Storage()).write_bytes(uri, self.model_proto)

    @property
    def vocab_size(self) -> int:
        """Number of text ids (special tokens and byte pieces included)."""
        return self.sp.get_piece_size()

    @property
    def special_ids(self) -> dict[str, int]:
        return {"pad": self.pad_id, "unk": self.unk_id, "bos": self.bos_id, "eos": self.eos_id,
                "bov": self.bov_id, "eov": self.eov_id}

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Text -> ids, with BOS first when `add_bos` (the layout's `[BOS] text ...`)."""
        ids = self.sp.encode(text, out_type=int)
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; special ids are dropped."""
        special = set(self.special_ids.values())
        return self.sp.decode([int(i) for i in ids if int(i) not in special])

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))
