"""The unified vocabulary and sequence layout, in one place.

Token ids:   [0, text_vocab_size)                      text pieces; the specials among them:
                                                       <pad>=0 <unk>=1 <s>=2 </s>=3 <bov>=4 <eov>=5
             [video_offset, video_offset + codebook)   video codes (video_offset = text_vocab_size)
             [.., padded_vocab_size)                   padding ids, never produced or targeted

Sequence:    <s> text... <bov> f0 (h x w codes, raster order) f1 ... f_{F-1} <eov>

Next-token prediction; the loss is on the video codes and <eov> (the text is the condition).
Each position also carries the latent-frame index of the token it predicts (-1 for text), which
the loss re-weighting groups by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100  # target id that takes no loss


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
    bov_id: int = 4
    eov_id: int = 5

    @property
    def video_offset(self) -> int:
        return self.text_vocab_size

    @property
    def vocab_size(self) -> int:
        """Ids in use: text + video."""
        return self.text_vocab_size + self.codebook_size

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def video_to_tokens(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(codes, dtype=np.int64) + self.video_offset

    def tokens_to_video(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size and (tokens.min() < self.video_offset or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids outside the video range [{self.video_offset}, {self.vocab_size})")
        return tokens - self.video_offset

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
