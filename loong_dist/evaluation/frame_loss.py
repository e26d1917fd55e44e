"""Teacher-forced loss of the transformer per latent frame, split by what each target token shows.

    cells = object_cells(attrs, frames=17, size=128, grid=(16, 16))       # bool (5, 16, 16)
    loss = clip_token_loss(model, layout, text_ids, codes)               # float (5, 16, 16), nats
    table = summarise([{"still": ..., "loss": loss, "object": cells, "tokens": tokens}, ...])

A model that holds a scene for a minute carries what it drew from one latent frame to the next. On
a synthetic clip whose object stands still, latent frames 1.. repeat frame 0 cell for cell, so a
model that copies pays far less for their object cells than for frame 0's, which it must draw from
the caption alone; a model that redraws every frame pays about the same. Background cells are one
flat code and cost little either way, so a mean over all tokens hides the difference: the table
keeps object and background cells, still and moving clips, apart. `repeat` counts the tokens equal
to the same cell one latent frame back, the ones a copy would get right.

No sampling is involved: the loss is read off one forward pass over the real tokens, so it is
exact and cheap to follow over a run's exports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from loong_dist.data.synthetic import object_pixels
from loong_dist.models.ar.layout import VocabLayout

GROUPS = ("still_object", "still_background", "moving_object", "moving_background")
"""Token groups of the table: the clip's motion, and whether the cell shows any of the object."""


def latent_frame_spans(frames: int, time_factor: int = 4) -> list[tuple[int, int]]:
    """Pixel frames [start, stop) behind each latent frame of a 1 + 4k-frame clip under the
    tokenizer's causal time compression: latent 0 is frame 0, latent j >= 1 frames 4j-3 .. 4j."""
    if frames < 1 or (frames - 1) % time_factor:
        raise ValueError(f"frames={frames}: must be 1 + {time_factor}k")
    return [(0, 1)] + [(time_factor * j - time_factor + 1, time_factor * j + 1)
                       for j in range(1, (frames - 1) // time_factor + 1)]


def object_cells(attrs: dict, frames: int, size: int, grid: Sequence[int]) -> np.ndarray:
    """bool (latent frames, rows, cols): the latent cells whose pixels (over the pixel frames the
    latent frame stands for) show any of the synthetic clip's object."""
    rows, cols = grid
    if size % rows or size % cols:
        raise ValueError(f"size {size} is not a multiple of the latent grid {list(grid)}")
    pix = object_pixels(attrs, frames, size)  # (T, size, size)
    cells = pix.reshape(frames, rows, size // rows, cols, size // cols).any(axis=(2, 4))  # (T, rows, cols)
    return np.stack([cells[a:b].any(axis=0) for a, b in latent_frame_spans(frames)])


@torch.no_grad()
def clip_token_loss(model: torch.nn.Module, layout: VocabLayout, text_ids: Sequence[int], codes: np.ndarray,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """Cross-entropy (nats) of every video token of one clip, teacher-forced after its caption:
    codes int (F, h, w) -> float64 (F, h, w), the loss of predicting each token from all before it."""
    codes = np.asarray(codes)
    sample = layout.build(list(text_ids), codes)
    tokens = torch.from_numpy(sample["tokens"])[None].to(device)  # (1, s)
    targets = torch.from_numpy(sample["targets"])[None].to(device)  # (1, s)
    loss = model(tokens, targets)[0].double().cpu().numpy()  # (s,), 0 where ignored
    video = (sample["frame"] >= 0) & (sample["frame"] < codes.shape[0])  # the video tokens, not <eov>
    return loss[video].reshape(codes.shape)


def summarise(rows: Sequence[dict]) -> dict:
    """Means over clips. rows: {"still": bool, "loss": (F, h, w), "object": bool (F, h, w),
    "tokens": the video tokens (F, h, w)}. Returns per latent frame, for each of GROUPS, the mean loss and the number
    of tokens; for frames >= 1, the share of tokens that repeat their cell one frame back and the
    loss on them; and `copy_gain`: still clips' object cells, frame 0's mean loss minus that of the
    later frames (near 0: every frame is drawn anew; large: the model copies)."""
    if not rows:
        return {"clips": 0, "frames": []}
    n_frames = min(r["loss"].shape[0] for r in rows)
    table = []
    for f in range(n_frames):
        entry: dict = {"latent_frame": f}
        for group in GROUPS:
            motion, cell = group.split("_")
            mine = [r for r in rows if r["still"] == (motion == "still")]
            losses = [r["loss"][f][r["object"][f] == (cell == "object")] for r in mine]
            values = np.concatenate(losses) if losses else np.zeros(0)
            entry[group] = {"loss": float(values.mean()) if values.size else None, "tokens": int(values.size)}
        if f >= 1:
            same = [r["tokens"][f] == r["tokens"][f - 1] for r in rows]
            repeat_loss = np.concatenate([r["loss"][f][s] for r, s in zip(rows, same)])
            entry["repeat_share"] = float(np.mean(np.concatenate([s.ravel() for s in same])))
            entry["repeat_loss"] = float(repeat_loss.mean()) if repeat_loss.size else None
        table.append(entry)
    still_object = [t["still_object"] for t in table]
    gain = None
    if n_frames > 1 and still_object[0]["tokens"] and sum(t["tokens"] for t in still_object[1:]):
        later = sum(t["loss"] * t["tokens"] for t in still_object[1:] if t["tokens"]) / sum(
            t["tokens"] for t in still_object[1:])
        gain = still_object[0]["loss"] - later
    return {"clips": len(rows), "still_clips": sum(bool(r["still"]) for r in rows), "copy_gain": gain,
            "frames": table}
