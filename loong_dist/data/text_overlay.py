"""On-screen text drawn over training clips: titles, subtitles and scrolling credits.

Real video carries text - opening titles, subtitles, captions, end credits - and a tokenizer that
never saw any turns it into grey smears, where a stroke-level error costs most of a clip's PSNR.
The sample footage the tokenizer trains on has almost none, so `overlay_text` draws it: a few
lines of random words in one of matplotlib's DejaVu fonts (sizes of a few pixels, as credits are
once 720p is scaled to 128), static, scrolling up or fading in, over the clip itself, whose
background may be darkened first as credits often are. The draw depends only on the generator it
is given, so a seeded run gets the same overlays again.

Units: pixels of the clip (T, H, W, 3) uint8; speeds in pixels per frame.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
              "DejaVuSans-Oblique.ttf")
"""Fonts drawn from (shipped with matplotlib, a dependency of the project)."""
FONT_SIZES = (7, 16)
"""Smallest and largest font size (pixels per em; capitals are about 0.73 of it)."""
LETTERS = "ETAOINSHRDLCUMWFGYPBVKJXQZ"
"""Letters in English frequency order, drawn with falling weights (readable-looking words)."""
MOTIONS = ("static", "scroll", "fade")


@functools.lru_cache(maxsize=None)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name)
    return ImageFont.truetype(path, size) if os.path.exists(path) else ImageFont.load_default(size)


def _word(rng: np.random.Generator) -> str:
    """2-9 letters, the frequent ones more often."""
    weights = 1.0 / np.arange(1, len(LETTERS) + 1) ** 0.8
    letters = rng.choice(list(LETTERS), int(rng.integers(2, 10)), p=weights / weights.sum())
    return "".join(letters)


def _line(rng: np.random.Generator, font: ImageFont.FreeTypeFont, room: float) -> str:
    """One to three random words in one case, cut to fit `room` pixels."""
    case = rng.integers(3)
    words = [w if case == 0 else w.capitalize() if case == 1 else w.lower()
             for w in (_word(rng) for _ in range(int(rng.integers(1, 4))))]
    line = " ".join(words)
    while len(line) > 1 and font.getlength(line) > room:
        line = line[:-1].rstrip()
    return line


def text_layer(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour (3,) and coverage (height, width) in [0, 1] of a block of text lines:
    one column or two (name - role, as credits are), one font and colour per block."""
    font = _font(FONT_FILES[rng.integers(len(FONT_FILES))], int(rng.integers(FONT_SIZES[0], FONT_SIZES[1] + 1)))
    line_h = int(font.size * rng.uniform(1.1, 1.8))
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    two_columns = rng.random() < 0.5
    x0 = int(rng.integers(0, max(1, width // 4)))
    room = (width // 2 if two_columns else width) - x0 - 2
    y = int(rng.integers(0, height // 2))  # the block starts somewhere in the top half...
    end = int(rng.uniform(y + line_h, height + 1))  # ...and ends anywhere below that
    while y < min(end, height - font.size):
        if rng.random() < 0.85:  # some blank lines between groups
            draw.text((x0, y), _line(rng, font, room), fill=255, font=font)
            if two_columns:
                draw.text((x0 + width // 2, y), _line(rng, font, width - x0 - width // 2 - 2), fill=255, font=font)
        y += line_h
    alpha = np.asarray(mask, np.float32) / 255.0
    if rng.random() < 0.7:
        colour = np.full(3, rng.uniform(200, 255))  # white or near-white, the usual
    else:
        colour = rng.uniform(0, 255, 3)
    return colour.astype(np.float32), alpha


def overlay_text(clip: np.ndarray, rng: np.random.Generator, motion: str | None = None) -> np.ndarray:
    """`clip` (T, H, W, 3) uint8 with a block of text drawn over it (a new array); `motion` one
    of MOTIONS, drawn when None."""
    if motion is not None and motion not in MOTIONS:
        raise ValueError(f"overlay_text: motion={motion!r}: must be one of {', '.join(MOTIONS)}")
    t, h, w, _ = clip.shape
    drawn = MOTIONS[rng.integers(len(MOTIONS))]  # drawn either way: a given motion keeps the stream
    motion = motion or drawn
    speed = rng.uniform(0.5, 3.0) if motion == "scroll" else 0.0
    travel = int(np.ceil(speed * (t - 1)))
    colour, alpha = text_layer(rng, w, h + travel)
    out = clip.astype(np.float32)
    if rng.random() < 0.5:  # credits often run over a darkened picture
        out *= rng.uniform(0.15, 0.8)
    for i in range(t):
        top = int(round(speed * i))  # scrolling up: the layer's window moves down it
        a = alpha[top:top + h]
        if motion == "fade":
            a = a * min(1.0, (i + 1) / max(1.0, (t - 1) / 2))
        out[i] = out[i] * (1 - a[..., None]) + colour * a[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
