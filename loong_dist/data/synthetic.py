"""Procedural captioned clips: one shape with attributes moving over a plain background.

Every clip is drawn from its attributes alone, and its caption is made from the same attributes,
so a program can check generated pixels against a prompt (`detect_attributes`).

The frame is a torus: a shape that leaves one edge comes back in at the opposite one, as in the
old arcade games. A minute-long video of "moving right slowly" (480 frames at 8 fps, 7.5 frame
widths of travel) therefore still shows its shape, moving right at the same speed, in its last
seconds; with straight paths it would leave the picture after a few seconds, and no caption could
be checked there.

Attributes (a JSON-friendly dict; `attributes_for(index, seed)` is a pure function of both):
    shape       one of SHAPES                     colour      one of COLOURS (the shape's fill)
    size        "small" | "large" (SIZES)         background  one of BACKGROUNDS, contrasting with colour
    motion      "left" | "right" | "up" | "down" | "still"  ("up" is towards row 0)
    speed       "slow" | "fast" (SPEEDS), None when motion is "still"
    x, y        centre of the shape's bounding box in frame 0 (fraction of the frame side)

Units: positions, sizes and speeds are fractions of the frame side (speeds per frame), so one
set of attributes renders the same scene at 64 or 128 pixels. Speeds are constant per frame
whatever the clip length, so a shorter clip is the first frames of a longer one. The start is
uniform on the torus, so every frame of every clip, the first included, may show the shape split
over two edges: a long video extended from the tail of the last clip starts its next clip from
such a frame, and training has shown the model frames like it at every position.

Held-out appearances: `held_out_appearances(share, seed)` picks a fixed share of the 240
(shape, colour, size, background) combinations; every clip showing one is split=held_out, so a
model trained on the train split never saw any of them, in any motion (`split_for`).

Notation: T frames, H x W pixels (H = W = the `size` argument); pixel (row i, column j) covers
[i, i + 1) x [j, j + 1), so its centre is at (i + 0.5, j + 0.5). Everything is numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {  # name -> sRGB; closest pair (orange, yellow) is ~95 apart in RGB
    "red": (220, 40, 40), "orange": (250, 130, 20), "yellow": (245, 225, 50), "green": (40, 170, 60),
    "cyan": (40, 200, 220), "blue": (40, 70, 220), "purple": (150, 50, 200),
}
BACKGROUNDS = {"black": (20, 20, 20), "white": (240, 240, 240), "grey": (120, 120, 120), "beige": (225, 205, 160)}
MIN_CONTRAST = 140.0
"""Smallest RGB distance between a shape's colour and its background (0-255 units per channel)."""
SIZES = {"small": 0.2, "large": 0.34}
"""Side of the shape's bounding box (fraction of the frame side)."""
MOTIONS = ("left", "right", "up", "down", "still")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
SPEEDS = {"slow": 1 / 64, "fast": 1 / 32}
"""Displacement per frame (fraction of the frame side). At 128 px these are 2 and 4 pixels a frame:
one and two cells of the video tokenizer's 8-pixel latent grid per latent frame (4 frames), so the
motion a caption asks for moves the shape's codes by whole cells, and is a large part of what the
next latent frame's tokens say. (At a quarter and a half cell per latent frame, the first speeds,
a transformer trained 2,600 steps on 17- and 65-frame clips copied the first frame and ignored
the motion words.)"""
START_MARGIN = 1 / 64
"""Least gap (fraction of the side) between the shape's bounding box and an edge in frame 0 under
`start_inside`: 2 px at 128 px, past the 1-px anti-aliasing ramp and the triangle's apex."""
ADVERBS = {"slow": "slowly", "fast": "quickly"}
MAX_FRAMES = 65
"""Longest training clip of the recipe (65 frames = 17 latent frames); longer ones render too."""

# Area of the filled shape over side^2, and its centroid's offset below the bounding-box centre
# (fraction of the side): what `detect_attributes` needs to fit a template to a mask.
_AREA = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5, "cross": 5 / 9}
_CENTROID_DY = {"triangle": 1 / 6}


def backgrounds_for(colour: str) -> list[str]:
    """Backgrounds at least MIN_CONTRAST away from `colour`, in BACKGROUNDS order."""
    c = np.array(COLOURS[colour], float)
    return [b for b, rgb in BACKGROUNDS.items() if np.linalg.norm(c - rgb) >= MIN_CONTRAST]


def sample_attributes(rng: np.random.Generator, num_frames: int = MAX_FRAMES,
                      still_share: float | None = None, start_grid: int | None = None,
                      start_inside: bool = False) -> dict[str, Any]:
    """Draw one clip's attributes. The draws do not depend on `num_frames`; a single frame (an
    image) only reports motion "still" and speed None, since no motion can be seen in it.
    `still_share`: the chance that the clip stands still, the four directions sharing the rest
    evenly (None: the five motions alike, 1/5 each, with the draws of a corpus rendered before
    the option existed).
    `start_grid`: the start is snapped down to a multiple of 1 / start_grid of the frame side (16
    at 128 px: the corner of a cell of the tokenizer's 8-px latent grid); the other draws stay as
    without it. Every speed is a whole number of pixels a frame at 128 px, so the object stays at
    the same place within its cells at every latent frame of a moving clip, too.
    `start_inside`: frame 0 shows the whole shape, START_MARGIN or more from every edge (the start is
    drawn from the same random numbers, over the centres that allow it; on the grid with
    `start_grid`). Later frames of a moving clip still wrap around the edges."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    allowed = backgrounds_for(colour)
    background = allowed[rng.integers(len(allowed))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    speed = list(SPEEDS)[rng.integers(len(SPEEDS))]
    start = [round(float(u), 4) for u in rng.random(2)]  # anywhere on the torus, frame 0 included
    if still_share is not None:  # one more draw, after the others: they stay as without the option
        u, moving = float(rng.random()), [m for m in MOTIONS if m != "still"]
        k = len(moving)
        motion = "still" if u < still_share else moving[min(int((u - still_share) / (1 - still_share) * k), k - 1)]
    start = [_place(u, SIZES[size] / 2, start_grid, start_inside) for u in start]
    if motion == "still" or num_frames == 1:
        motion, speed = "still", None
    return {"shape": shape, "colour": colour, "size": size, "motion": motion, "speed": speed,
            "background": background, "x": start[0], "y": start[1]}


def _place(u: float, half: float, grid: int | None, inside: bool) -> float:
    """A start coordinate from the uniform draw u in [0, 1): anywhere, or with `inside` a centre
    whose shape (half its side: `half`) keeps START_MARGIN from both edges; with `grid`, on a
    multiple of 1 / grid (snapped down when anywhere; one of the grid points inside, chosen by u)."""
    if not inside:
        return u if grid is None else float(np.floor(u * grid) / grid)
    lo, hi = half + START_MARGIN, 1.0 - half - START_MARGIN
    if grid is None:
        return round(lo + u * (hi - lo), 4)
    first, last = int(np.ceil(lo * grid - 1e-9)), int(np.floor(hi * grid + 1e-9))
    return (first + min(int(u * (last - first + 1)), last - first)) / grid


def attributes_for(index: int, seed: int, num_frames: int = MAX_FRAMES, still_share: float | None = None,
                   start_grid: int | None = None, start_inside: bool = False) -> dict[str, Any]:
    """Attributes of clip `index` of the dataset with `seed` (and `still_share`, `start_grid`,
    `start_inside`, see `sample_attributes`): the same arguments, the same clip."""
    return sample_attributes(np.random.default_rng([seed, index]), num_frames, still_share, start_grid, start_inside)


APPEARANCE = ("shape", "colour", "size", "background")
"""The attributes one frame shows; a clip's motion and speed come on top."""


def appearance(attrs: dict[str, Any]) -> tuple[str, str, str, str]:
    return tuple(attrs[k] for k in APPEARANCE)


def all_appearances() -> list[tuple[str, str, str, str]]:
    """Every (shape, colour, size, background) the renderer draws: 5 x 2 x 24 colour-background
    pairs = 240, in a fixed order."""
    return [(shape, colour, size, bg) for shape in SHAPES for colour in COLOURS for size in SIZES
            for bg in backgrounds_for(colour)]


def _pairs(appearances) -> set[tuple[int, str, int, str]]:
    """(attribute i, value, attribute j, value) of every two attributes shown together."""
    return {(i, a[i], j, a[j]) for a in appearances for i in range(len(a)) for j in range(i + 1, len(a))}


def held_out_appearances(share: float, seed: int = 0) -> frozenset[tuple[str, str, str, str]]:
    """round(share x 240) appearances that no training clip shows. A pure function of (share, seed):
    every corpus rendered with the same two holds out the same combinations, whatever its run
    seed. Drawn so that the training ones still show every pair of values of two attributes (each
    colour on each allowed background, each shape in each colour and size...): what is held out is
    a combination, never a value or a pair the model cannot learn."""
    every = all_appearances()
    n = round(share * len(every))
    if n == 0:
        return frozenset()
    need = _pairs(every)
    rng = np.random.default_rng([seed, 0x5EED])
    for _ in range(1000):
        order = rng.permutation(len(every))
        held = {every[i] for i in order[:n]}
        if _pairs(a for a in every if a not in held) == need:
            return frozenset(held)
    raise ValueError(f"synthetic.held_out={share}: no draw of {n} held-out appearances leaves every attribute "
                     f"pair in the training ones; use a smaller share")


def split_for(attrs: dict[str, Any], held: frozenset) -> str:
    """"held_out" when the clip's appearance is one of `held` (`held_out_appearances`), else "train"."""
    return "held_out" if appearance(attrs) in held else "train"


def held_out_prompts(n: int, seed: int, held: frozenset, num_frames: int = MAX_FRAMES) -> list[dict[str, Any]]:
    """`n` prompts whose appearances are all held out, no two with the same six attributes
    (appearance, motion, speed), drawn as the corpus draws clips (clip i of `seed`, skipping the
    others): {"prompt": caption, "attributes": attributes}. An evaluation set for a model trained
    on the train split: not one of its combinations was seen, even in another motion."""
    out, seen = [], set()
    for i in range(200 * n + 10_000):
        a = attributes_for(i, seed, num_frames)
        key = appearance(a) + (a["motion"], a["speed"])
        if appearance(a) in held and key not in seen:
            seen.add(key)
            out.append({"prompt": caption(a, num_frames), "attributes": a})
            if len(out) == n:
                return out
    raise ValueError(f"only {len(out)} distinct held-out prompts found for n={n}: hold out more appearances")


def caption(attrs: dict[str, Any], num_frames: int) -> str:
    """'a large red circle moving left quickly on a black background'; images have no motion phrase."""
    thing = f"a {attrs['size']} {attrs['colour']} {attrs['shape']}"
    if num_frames == 1:
        motion = ""
    elif attrs["motion"] == "still":
        motion = " standing still"
    else:
        motion = f" moving {attrs['motion']} {ADVERBS[attrs['speed']]}"
    return f"{thing}{motion} on a {attrs['background']} background"


def _sdf(shape: str, dx: np.ndarray, dy: np.ndarray, half) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) from offsets to the bounding-box centre; `half` is
    half the side (pixels). Polygons use the distance to the nearest edge line: exact along the
    edges, shorter beyond a sharp vertex (the anti-aliased ramp reaches ~1 px past the triangle's apex)."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - half
    if shape == "square":
        return np.maximum(ax, ay) - half
    if shape == "diamond":
        return (ax + ay - half) * np.float32(1 / np.sqrt(2))
    if shape == "triangle":  # apex up at (0, -half), base from (-half, half) to (half, half)
        return np.maximum(dy - half, (2 * ax - dy - half) * np.float32(1 / np.sqrt(5)))
    if shape == "cross":  # a plus sign, arms a third of the side wide
        arm = half / 3
        return np.minimum(np.maximum(ax - half, ay - arm), np.maximum(ax - arm, ay - half))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _sdf_grid(shape: str, cx, cy, half, rows: np.ndarray, cols: np.ndarray, period: float | None = None) -> np.ndarray:
    """Signed distance (pixels), float32 (T, H, W), for bounding-box centres cx, cy (T,) and
    pixel-centre coordinates rows (H,), cols (W,), all in pixels; `half` is half the side
    (pixels, a number or (T, 1, 1)). With `period` (pixels) the plane is a torus of that side:
    offsets are taken to the nearest copy of the centre."""
    dx = cols.astype(np.float32)[None, None, :] - np.asarray(cx, np.float32)[:, None, None]  # (T, 1, W)
    dy = rows.astype(np.float32)[None, :, None] - np.asarray(cy, np.float32)[:, None, None]  # (T, H, 1)
    if period is not None:
        p = np.float32(period)
        dx, dy = (dx + p / 2) % p - p / 2, (dy + p / 2) % p - p / 2
    return _sdf(shape, dx, dy, half)


def _alpha(shape: str, cx, cy, half, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of each pixel, float32 (T, H, W) (arguments as `_sdf_grid`): a linear
    ramp one pixel wide across the edge anti-aliases it."""
    return np.clip(0.5 - _sdf_grid(shape, cx, cy, half, rows, cols), 0.0, 1.0)


def centre_track(attrs: dict[str, Any], num_frames: int) -> np.ndarray:
    """Bounding-box centre of every frame, float64 (T, 2) as (x, y) fractions of the frame side,
    unwrapped (a straight line; the picture shows it modulo 1)."""
    step = DIRECTIONS[attrs["motion"]]
    v = SPEEDS[attrs["speed"]] if attrs["motion"] != "still" else 0.0
    t = np.arange(num_frames)[:, None]
    return np.array([attrs["x"], attrs["y"]]) + t * v * np.array(step, float)


def _coverage_levels(attrs: dict[str, Any], num_frames: int, size: int) -> np.ndarray:
    """The object's coverage of each pixel as 256 levels, uint8 (T, size, size): the `_alpha` ramp,
    times 255, rounded; the shape wraps around the edges."""
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: must be >= 1")
    centres = (centre_track(attrs, num_frames) % 1.0) * size  # (T, 2) pixels
    grid = np.arange(size) + 0.5  # pixel centres
    sdf = _sdf_grid(attrs["shape"], centres[:, 0], centres[:, 1], SIZES[attrs["size"]] * size / 2, grid, grid,
                    period=size)
    return np.clip(np.float32(128) - np.float32(255) * sdf, 0, 255, out=sdf).astype(np.uint8)  # (T, H, W)


def object_pixels(attrs: dict[str, Any], num_frames: int, size: int) -> np.ndarray:
    """bool (T, size, size): the pixels `render_clip` draws with any of the object's colour."""
    return _coverage_levels(attrs, num_frames, size) > 0


def render_clip(attrs: dict[str, Any], num_frames: int, size: int) -> np.ndarray:
    """The clip as uint8 (T, size, size, 3) RGB, T = num_frames; the shape wraps around the edges."""
    levels = _coverage_levels(attrs, num_frames, size)
    # Background and object colours blended by level through a table: one gather instead of float
    # maths on (T, H, W, 3).
    bg, fg = np.array(BACKGROUNDS[attrs["background"]], float), np.array(COLOURS[attrs["colour"]], float)
    lut = np.round(bg + np.linspace(0.0, 1.0, 256)[:, None] * (fg - bg)).astype(np.uint8)  # (256, 3)
    return np.take(lut, levels, axis=0)  # (T, H, W, 3)


# ----------------------------------------------------------------------------------------------
# Reading the attributes back from pixels


def _nearest(palette: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> str:
    names = list(palette)
    dist = np.linalg.norm(np.array([palette[n] for n in names], float) - rgb, axis=1)
    return names[int(np.argmin(dist))]


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian blur of standard deviation `sigma` (pixels) along one axis, rows summing to 1."""
    if sigma < 0.05:
        return np.eye(n)
    i = np.arange(n)
    k = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    return k / k.sum(axis=1, keepdims=True)


def _moments(c: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[float, float, float, float]:
    """Mass, centroid (x, y) and mean axis variance (pixels^2) of a coverage map (H, W)."""
    mass = float(c.sum())
    px, py = c.sum(axis=0), c.sum(axis=1)  # (W,), (H,)
    mx, my = float(px @ cols) / mass, float(py @ rows) / mass
    var = (float(px @ (cols - mx) ** 2) + float(py @ (rows - my) ** 2)) / (2 * mass)
    return mass, mx, my, var


def _circular_mean(mass: np.ndarray, n: int) -> np.ndarray:
    """Centroid (pixels, in [0, n)) on a circle of n pixels of each row of mass (V, n): the angle
    of the mean of e^(i 2 pi x / n), so a shape split over the two edges has its centre between them."""
    angle = 2 * np.pi * (np.arange(n) + 0.5) / n
    z = mass @ np.exp(1j * angle)  # (V,)
    return (np.angle(z) * n / (2 * np.pi)) % n


GAINS = np.linspace(0.8, 1.2, 9)
"""Contrast factors tried between the measured coverage and a template: the shape's colour is
read from its most distant pixels, which blur pulls towards the background."""


def _fit_shapes(cov: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> dict[str, tuple[float, float, float, float]]:
    """For each shape: (squared error, side in pixels, blur sigma in pixels, gain) of the best template.

    `cov` (H, W) is the coverage in a window around one shape, unclipped so that noise averages
    out. A Gaussian blur keeps the area and adds its variance to the second moment, so for a
    given contrast gain (GAINS) the sum fixes each shape's side and the second moment its blur;
    the template drawn with them is compared with `cov` pixel by pixel."""
    mass, mx, my, var = _moments(cov, rows, cols)
    out = {}
    for shape in SHAPES:
        best = (np.inf, 0.0, 0.0, 1.0)
        for gain in GAINS:
            side = np.sqrt(mass / gain / _AREA[shape])
            tmpl = _alpha(shape, [mx], [my - _CENTROID_DY.get(shape, 0.0) * side], side / 2, rows, cols)[0]
            sigma = np.sqrt(max(var - _moments(tmpl, rows, cols)[3], 0.0))
            tmpl = gain * (_blur_matrix(len(rows), sigma) @ tmpl @ _blur_matrix(len(cols), sigma).T)
            err = float(np.sum((cov - tmpl) ** 2))
            if err < best[0]:
                best = (err, float(side), float(sigma), float(gain))
        out[shape] = best
    return out


def detect_attributes(frames: np.ndarray, template_frames: int = 6) -> dict[str, Any]:
    """Recover shape, colour, size, motion, speed and background from uint8 (T, H, W, 3) RGB.

    Background: the median of a thin border ring. Colour: the median of the pixels farthest from
    it. Each pixel's coverage is its projection on the background -> colour line; coverage > 0.5
    is the mask, whose centroid over time gives the motion (a straight-line fit; the centroid is
    a circular mean and the track is unwrapped, since shapes wrap around the edges). Shape and size:
    on up to `template_frames` frames, each shape's template with the observed area, centroid and
    blur (`_fit_shapes`) is compared with the coverage; the smallest summed squared error wins,
    and its contrast gain corrects the colour (blur fades small shapes towards the background).
    Robust to mild blur and noise. Keys as `attributes_for` (x, y left out), plus `measured`:
    side (fraction of the frame side), velocity (x, y fractions of the side per frame), blur
    (pixels; rough, from second moments), shape_fit (1 - residual energy / coverage energy), colour_rgb, background_rgb.
    The attributes are None when no shape stands out from the background.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    t, h, w, _ = frames.shape
    x = frames.astype(np.float32)
    ring = max(1, round(0.02 * min(h, w)))
    border = np.concatenate([x[:, :ring].reshape(-1, 3), x[:, -ring:].reshape(-1, 3),
                             x[:, :, :ring].reshape(-1, 3), x[:, :, -ring:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    out: dict[str, Any] = {"shape": None, "colour": None, "size": None, "motion": None, "speed": None,
                           "background": _nearest(BACKGROUNDS, bg),
                           "measured": {"background_rgb": bg.round(1).tolist()}}
    dist = np.linalg.norm(x - bg, axis=-1)  # (T, H, W)
    far = dist > max(0.75 * float(np.percentile(dist, 99.9)), MIN_CONTRAST / 4)
    if not far.any():
        return out
    fg = np.median(x[far], axis=0)
    cov = (x - bg) @ ((fg - bg) / float(np.sum((fg - bg) ** 2)))  # (T, H, W), ~[0, 1] plus noise
    mask = cov > 0.5
    area = mask.sum(axis=(1, 2)).astype(float)  # (T,) pixels
    valid = np.flatnonzero(area > 0)
    if len(valid) == 0:
        return out
    rows, cols = np.arange(h) + 0.5, np.arange(w) + 0.5
    # The frame is a torus: the mask centroid is a circular mean, unwrapped over time below.
    cx = _circular_mean(mask.sum(axis=1)[valid], w)  # (V,) pixels in [0, w)
    cy = _circular_mean(mask.sum(axis=2)[valid], h)

    pad = max(5, round(0.06 * min(h, w)))  # room for blurred edges around the mask's bounding box
    fits: dict[str, list] = {s: [] for s in SHAPES}
    energy = 0.0
    picks = np.unique(np.linspace(0, len(valid) - 1, min(template_frames, len(valid))).round().astype(int))
    for i in picks:
        f = valid[i]
        # Rolled so that the shape sits in the middle, whole, even where it wraps an edge.
        shift = (round(h / 2 - cy[i]), round(w / 2 - cx[i]))
        m, c = np.roll(mask[f], shift, axis=(0, 1)), np.roll(cov[f], shift, axis=(0, 1))
        ys, xs = np.nonzero(m)
        y0, y1 = max(ys.min() - pad, 0), min(ys.max() + 1 + pad, h)
        x0, x1 = max(xs.min() - pad, 0), min(xs.max() + 1 + pad, w)
        win = c[y0:y1, x0:x1]
        energy += float(np.sum(win ** 2))
        for shape, fit in _fit_shapes(win, rows[y0:y1], cols[x0:x1]).items():
            fits[shape].append(fit)
    errors = {s: sum(fit[0] for fit in v) for s, v in fits.items()}
    shape = min(errors, key=errors.get)
    _, side, blur, gain = np.mean(fits[shape], axis=0)
    side /= min(h, w)
    fg = bg + gain * (fg - bg)  # the contrast the template fit found
    cut = np.sqrt(SIZES["small"] * SIZES["large"])  # geometric mean of the two sides

    velocity = np.zeros(2)
    if len(valid) >= 2:  # least-squares slope of the unwrapped centroid over frame index, fractions per frame
        ux, uy = np.unwrap(cx / w, period=1.0), np.unwrap(cy / h, period=1.0)
        velocity = np.array([np.polyfit(valid, ux, 1)[0], np.polyfit(valid, uy, 1)[0]])
    speed = float(np.hypot(*velocity))
    slow, fast = SPEEDS["slow"], SPEEDS["fast"]
    if t == 1 or speed < slow / 2:
        motion, speed_name = "still", None
    else:
        vx, vy = velocity
        motion = ("right" if vx > 0 else "left") if abs(vx) >= abs(vy) else ("down" if vy > 0 else "up")
        speed_name = "fast" if speed > np.sqrt(slow * fast) else "slow"
    out.update(shape=shape, colour=_nearest(COLOURS, fg), size="small" if side < cut else "large",
               motion=motion, speed=speed_name)
    out["measured"].update(side=round(float(side), 4), velocity=velocity.round(5).tolist(), blur=round(float(blur), 2),
                           shape_fit=round(1.0 - errors[shape] / max(energy, 1e-9), 3),
                           colour_rgb=fg.round(1).tolist())
    return out


CHECKED = ("shape", "colour", "size", "motion", "speed", "background")
"""The attributes a caption states and `detect_attributes` reads back."""


def compare_attributes(expected: dict[str, Any], detected: dict[str, Any]) -> dict[str, bool]:
    """Per attribute of CHECKED: does the detected value equal the expected one?"""
    return {k: expected.get(k) == detected.get(k) for k in CHECKED}
