"""Text tokenizer: special ids, exact round trips, clear errors."""

import pytest

from loong_dist.data.text_tokenizer import TextTokenizer, train_text_tokenizer
from loong_dist.errors import TextTokenizerError

CAPTIONS = [f"a {s} {c} {sh} moving {d} on a {b} background"
            for s in ["small", "large"] for c in ["red", "green", "blue"] for sh in ["circle", "square"]
            for d in ["left", "right"] for b in ["black", "white"]]


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer(train_text_tokenizer(CAPTIONS * 4, vocab_size=400))


def test_special_ids(tok):
    assert tok.special_ids == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "bov": 4, "eov": 5}
    assert 300 <= tok.vocab_size <= 400


@pytest.mark.parametrize("text", [CAPTIONS[0], "  two  spaces ", "Ünïcødé 東京 🎬 12.5 s", "", "<bov> literal"])
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.unk_id not in ids  # byte fallback: nothing is unknown


def test_words_are_single_pieces(tok):
    # On the caption corpus every word is one piece: BOS + 10 words.
    assert len(tok.encode(CAPTIONS[0])) == 11


def test_save_load(tok, tmp_path):
    tok.save(str(tmp_path / "t.model"))
    again = TextTokenizer.load(str(tmp_path / "t.model"))
    assert again.encode(CAPTIONS[3]) == tok.encode(CAPTIONS[3])


def test_errors(tmp_path):
    with pytest.raises(TextTokenizerError, match="no non-empty captions"):
        train_text_tokenizer(["", " "], 400)
    (tmp_path / "x.model").write_bytes(b"not a model")
    with pytest.raises(TextTokenizerError, match="x.model: not a sentencepiece model"):
        TextTokenizer.load(str(tmp_path / "x.model"))
