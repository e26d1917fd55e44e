"""How a long generated video drifts from its first clip, and whether it shows what its prompt says.

Drift: the video is cut into windows of `window_s` seconds; each window is compared with the first
clip (the frames of the first generated window):
  - colour_tv: total-variation distance (0 same, 1 disjoint) between joint RGB histograms
    (8 bins per channel) of the window's pixels and the first clip's;
  - code_tv: the same distance between histograms of video-tokenizer codes (the window encoded
    as one clip), and code_entropy_bits: entropy of the window's code histogram - a video
    collapsing to a flat or repeated picture loses entropy;
  - motion: mean absolute difference between consecutive frames (uint8 levels) - a frozen video
    goes to 0.
Alignment (synthetic prompts): `detect_attributes` on each window's pixels against the attributes
the prompt was made from (shape, colour, size, motion, speed, background).

Notation: T frames, H, W pixels, F latent frames, h, w latent height and width.
"""

from __future__ import annotations

import numpy as np
import torch

from loong_dist.data.synthetic import CHECKED, compare_attributes, detect_attributes
from loong_dist.models.tokenizer import VideoTokenizer

COLOUR_BINS = 8


def colour_histogram(frames: np.ndarray, bins: int = COLOUR_BINS) -> np.ndarray:
    """uint8 (T, H, W, 3) -> joint RGB histogram (bins^3,) summing to 1."""
    q = (np.asarray(frames).reshape(-1, 3).astype(np.int64) * bins) // 256  # (T*H*W, 3) bin per channel
    flat = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = np.bincount(flat, minlength=bins ** 3).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Half the L1 distance of two distributions: 0 equal, 1 disjoint supports."""
    return float(0.5 * np.abs(p - q).sum())


def code_histogram(ids: np.ndarray | torch.Tensor, codebook_size: int) -> np.ndarray:
    """Ids of any shape -> histogram (codebook_size,) summing to 1."""
    ids = torch.as_tensor(ids).flatten().cpu()
    hist = torch.bincount(ids, minlength=codebook_size).double().numpy()
    return hist / max(hist.sum(), 1.0)


def entropy_bits(p: np.ndarray) -> float:
    nz = p[p > 0]
    return float(-(nz * np.log2(nz)).sum())


def motion(frames: np.ndarray) -> float:
    """Mean |frame t - frame t-1| over pixels and channels (uint8 levels); 0 for one frame."""
    frames = np.asarray(frames, dtype=np.int16)
    return float(np.abs(np.diff(frames, axis=0)).mean()) if len(frames) > 1 else 0.0


def encode_clip(tokenizer: VideoTokenizer, frames: np.ndarray, bf16: bool) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> ids (F, h, w) of its first 1 + 4k frames as one clip."""
    t = 1 + (len(frames) - 1) // 4 * 4
    return tokenizer.encode(np.ascontiguousarray(frames[None, :t]), bf16=bf16)[0]


def window_bounds(num_frames: int, fps: float, window_s: float) -> list[tuple[int, int]]:
    """[(start, end)) frame ranges of consecutive windows of window_s seconds; a last window shorter
    than half the others is merged into the one before it."""
    size = max(1, round(window_s * fps))
    starts = list(range(0, num_frames, size))
    bounds = [(s, min(s + size, num_frames)) for s in starts]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < size / 2:
        bounds[-2:] = [(bounds[-2][0], num_frames)]
    return bounds


def drift(frames: np.ndarray, fps: float, first_clip_frames: int, window_s: float,
          tokenizer: VideoTokenizer | None = None, bf16: bool = False) -> list[dict]:
    """Per window of `frames` (T, H, W, 3): drift statistics against the first clip (its first
    `first_clip_frames` frames). Code statistics only with a tokenizer."""
    first = frames[:first_clip_frames]
    ref_colour = colour_histogram(first)
    ref_codes = code_histogram(encode_clip(tokenizer, first, bf16), tokenizer.codebook_size) if tokenizer else None
    rows = []
    for start, end in window_bounds(len(frames), fps, window_s):
        win = frames[start:end]
        row = {"start_s": round(start / fps, 3), "end_s": round(end / fps, 3),
               "colour_tv": total_variation(colour_histogram(win), ref_colour), "motion": motion(win)}
        if tokenizer is not None:
            codes = code_histogram(encode_clip(tokenizer, win, bf16), tokenizer.codebook_size)
            row.update(code_tv=total_variation(codes, ref_codes), code_entropy_bits=entropy_bits(codes))
        rows.append(row)
    return rows


def alignment(frames: np.ndarray, attributes: dict, fps: float, window_s: float) -> list[dict]:
    """Per window: the detected attributes and, for each of CHECKED, whether it matches `attributes`."""
    rows = []
    for start, end in window_bounds(len(frames), fps, window_s):
        try:
            detected = detect_attributes(frames[start:end])
        except ZeroDivisionError:  # a fit on noise (untrained models) can leave an empty template
            detected = {k: None for k in CHECKED}
        match = compare_attributes(attributes, detected)
        rows.append({"start_s": round(start / fps, 3), "end_s": round(end / fps, 3), "match": match,
                     "detected": {k: detected.get(k) for k in CHECKED}})
    return rows


def summarise(videos: list[dict]) -> dict:
    """Means over videos per window index (drift) and match rates per attribute (alignment)."""
    out: dict = {"drift": [], "alignment": {}}
    n_windows = max((len(v["drift"]) for v in videos), default=0)
    for i in range(n_windows):
        rows = [v["drift"][i] for v in videos if len(v["drift"]) > i]
        keys = [k for k in rows[0] if k not in ("start_s", "end_s")]
        out["drift"].append({"window": i, "start_s": rows[0]["start_s"], "videos": len(rows),
                             **{k: float(np.mean([r[k] for r in rows])) for k in keys}})
    aligned = [v for v in videos if v.get("alignment")]
    if aligned:
        def rates(matches: list[dict]) -> dict:
            return {**{k: float(np.mean([m[k] for m in matches])) for k in CHECKED},
                    "all": float(np.mean([all(m[k] for k in CHECKED) for m in matches]))}

        first = [v["alignment"][0]["match"] for v in aligned]
        last = [v["alignment"][-1]["match"] for v in aligned]
        every = [w["match"] for v in aligned for w in v["alignment"]]
        n_windows = max(len(v["alignment"]) for v in aligned)
        out["alignment"] = {
            "videos": len(aligned),
            "first_window": {k: float(np.mean([m[k] for m in first])) for k in CHECKED},
            "last_window": {k: float(np.mean([m[k] for m in last])) for k in CHECKED},
            "all_windows": {k: float(np.mean([m[k] for m in every])) for k in CHECKED},
            "all_attributes_first_window": float(np.mean([all(m.values()) for m in first])),
            "all_attributes_last_window": float(np.mean([all(m.values()) for m in last])),
            # window i over the videos that reach it (match rate per attribute, and all six at once)
            "per_window": [{"window": i, "start_s": next(v["alignment"][i]["start_s"] for v in aligned
                                                         if len(v["alignment"]) > i),
                            "videos": sum(len(v["alignment"]) > i for v in aligned),
                            **rates([v["alignment"][i]["match"] for v in aligned if len(v["alignment"]) > i])}
                           for i in range(n_windows)],
        }
    return out
