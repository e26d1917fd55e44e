"""The unified vocabulary and sequence layout, in one place.

Token ids:   [0, text_vocab_size)                      text pieces; the specials among them:
                                                       <pad>=0 <unk>=1 <s>=2 </s>=3 <bov>=4 <eov>=5
             [video_offset, video_offset + V)          video tokens (video_offset = text_vocab_size)
             [.., padded_vocab_size)                   padding ids, never produced or targeted

Video tokens: with `codes` empty, V = codebook_size and token video_offset + c is code c. With
`codes` (the codes kept, ascending), V = len(codes) and token video_offset + i is code codes[i];
a code outside them is mapped to the kept code nearest to it on the FSQ grid (`fsq_levels`), so
any tokenizer output has a token. A corpus whose codes are few (synthetic scenes use a few
thousand of 64,000) then trains an output head of that size instead of the whole codebook.

Sequence:    <s> text... <bov> f0 (h x w codes, raster order) f1 ... f_{F-1} <eov>

Next-token prediction; the loss is on the video codes and <eov> (the text is the condition).
Each position also carries the latent-frame index of the token it predicts (-1 for text), which
the loss re-weighting groups by.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

IGNORE = -100  # target id that takes no loss
BOV_ID = 4  # <bov>: the model's 3D rotary positions count video tokens from it


@dataclass(frozen=True)
class VocabLayout:
    text_vocab_size: int
    """Text pieces, specials included (TextTokenizer.vocab_size)."""
    codebook_size: int
    """Video codes (VideoTokenizer.codebook_size)."""
    vocab_multiple: int = 128
    """padded_vocab_size is a multiple of this."""
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3
    bov_id: int = BOV_ID
    eov_id: int = 5
    codes: tuple[int, ...] = ()
    """Codes that have a video token, ascending (empty: every code of the codebook)."""
    fsq_levels: tuple[int, ...] = ()
    """FSQ levels of the codebook (their product is codebook_size); needed with `codes`, to map a
    code outside them to the nearest kept one."""

    def __post_init__(self):
        # Tuples whatever came in (a layout read back from JSON has lists): equal layouts compare equal.
        object.__setattr__(self, "codes", tuple(int(c) for c in self.codes))
        object.__setattr__(self, "fsq_levels", tuple(int(v) for v in self.fsq_levels))
        if self.codes:
            if list(self.codes) != sorted(set(self.codes)) or self.codes[0] < 0 or self.codes[-1] >= self.codebook_size:
                raise ValueError(f"layout codes must be ascending, distinct and in [0, {self.codebook_size})")
            if int(np.prod(self.fsq_levels or (0,))) != self.codebook_size:
                raise ValueError(f"layout with kept codes needs fsq_levels whose product is {self.codebook_size}, "
                                 f"got {list(self.fsq_levels)}")

    @property
    def video_offset(self) -> int:
        return self.text_vocab_size

    @property
    def video_vocab_size(self) -> int:
        """Video tokens: the kept codes, or the whole codebook."""
        return len(self.codes) or self.codebook_size

    @property
    def vocab_size(self) -> int:
        """Ids in use: text + video."""
        return self.text_vocab_size + self.video_vocab_size

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @cached_property
    def code_to_index(self) -> np.ndarray | None:
        """(codebook_size,) int64: the video token index of every code, the nearest kept code's
        where the code itself is not kept (None without `codes`)."""
        if not self.codes:
            return None
        return nearest_codes(np.asarray(self.codes), self.fsq_levels)

    def code_levels(self) -> np.ndarray:
        """(padded_vocab_size, len(fsq_levels)) int64: for each video token, its code's level on each
        FSQ dimension, as 1 + an index over all dimensions' levels (dimension d's after those of
        the dimensions before it); 0 for every other id. `Transformer` adds one learnt vector per
        entry to a video token's embeddings (model.code_level_embeddings)."""
        if not self.fsq_levels:
            raise ValueError("code levels need the layout's fsq_levels (shards written before they were recorded)")
        levels = np.asarray(self.fsq_levels, dtype=np.int64)
        basis = np.concatenate([[1], np.cumprod(levels)[:-1]])
        start = 1 + np.concatenate([[0], np.cumsum(levels)[:-1]])
        codes = np.asarray(self.codes, dtype=np.int64) if self.codes else np.arange(self.codebook_size)
        table = np.zeros((self.padded_vocab_size, len(levels)), dtype=np.int64)
        table[self.video_offset:self.vocab_size] = (codes[:, None] // basis) % levels + start
        return table

    def video_to_tokens(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        table = self.code_to_index
        return (codes if table is None else table[codes]) + self.video_offset

    def tokens_to_video(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size and (tokens.min() < self.video_offset or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids outside the video range [{self.video_offset}, {self.vocab_size})")
        index = tokens - self.video_offset
        return np.asarray(self.codes, dtype=np.int64)[index] if self.codes else index

    def describe(self) -> str:
        video = f"{len(self.codes)} of {self.codebook_size} codes" if self.codes else f"{self.codebook_size} codes"
        return f"{self.text_vocab_size} text pieces + {video} (padded to {self.padded_vocab_size})"

    def sequence_length(self, text_len: int, latent_frames: int, tokens_per_frame: int) -> int:
        """Tokens of `<s> text <bov> video <eov>` with `text_len` text pieces (BOS not counted)."""
        return 1 + text_len + 1 + latent_frames * tokens_per_frame + 1

    def build(self, text_ids: list[int], video_codes: np.ndarray) -> dict[str, np.ndarray]:
        """One training sample.

        text_ids: text pieces, with or without a leading <s>; video_codes: (F, h, w) codes.
        Returns int64 arrays of one length L-1 (inputs predict the next token):
          tokens  (L-1,)  inputs
          targets (L-1,)  next tokens; IGNORE where the next token is text or <bov>
          frame   (L-1,)  latent-frame index of the target (F for <eov>), -1 where ignored
        """
        codes = np.asarray(video_codes)
        if codes.ndim != 3:
            raise ValueError(f"video codes must be (frames, h, w), got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"video codes outside [0, {self.codebook_size})")
        text = [t for t in text_ids]
        if not text or text[0] != self.bos_id:
            text = [self.bos_id] + text
        f, h, w = codes.shape
        video = self.video_to_tokens(codes.reshape(-1))  # raster order within each frame: (F*h*w,)
        seq = np.concatenate([np.asarray(text + [self.bov_id], np.int64), video, [self.eov_id]])
        frame_of = np.concatenate([np.full(len(text) + 1, -1), np.repeat(np.arange(f), h * w), [f]])
        targets = seq[1:].copy()
        frame = frame_of[1:].copy()
        targets[frame < 0] = IGNORE
        return {"tokens": seq[:-1], "targets": targets, "frame": frame}


def fsq_grid(ids: np.ndarray, levels: tuple[int, ...]) -> np.ndarray:
    """Code ids (n,) -> their FSQ coordinates (n, len(levels)) in [-1, 1] (digit d of id is
    (id // prod(levels[:d])) % levels[d], as the tokenizer's quantizer numbers them)."""
    ids = np.asarray(ids, dtype=np.int64)[:, None]
    levels_ = np.asarray(levels, dtype=np.int64)
    basis = np.concatenate([[1], np.cumprod(levels_)[:-1]])
    return ((ids // basis) % levels_) * (2.0 / (levels_ - 1)) - 1.0


def nearest_codes(kept: np.ndarray, levels: tuple[int, ...], chunk: int = 8192) -> np.ndarray:
    """(prod(levels),) int64: for every code id, the index into `kept` (ascending ids) of the kept
    code nearest on the FSQ grid (Euclidean; ties to the lower id). Kept codes map to themselves."""
    n = int(np.prod(levels))
    grid_kept = fsq_grid(kept, levels)  # (k, d)
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        pts = fsq_grid(np.arange(start, min(start + chunk, n)), levels)  # (c, d)
        d2 = (pts ** 2).sum(1)[:, None] - 2 * pts @ grid_kept.T + (grid_kept ** 2).sum(1)[None, :]  # (c, k)
        out[start:start + len(pts)] = d2.argmin(1)
    out[kept] = np.arange(len(kept))  # exact, whatever the rounding of the distances
    return out
