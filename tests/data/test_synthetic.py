"""Procedural captioned clips: determinism, geometry, captions, and reading attributes back from pixels."""

from collections import Counter

import numpy as np
import pytest

from loong_dist.config import TokenizerConfig
from loong_dist.data.synthetic import (
    ADVERBS, BACKGROUNDS, CHECKED, COLOURS, MAX_FRAMES, MIN_CONTRAST, MOTIONS, SHAPES, SIZES, SPEEDS,
    all_appearances, appearance, attributes_for, backgrounds_for, caption, centre_track, compare_attributes,
    detect_attributes, held_out_appearances, object_pixels, render_clip, split_for)


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over H and W (edges repeated): float32 (T, H, W, 3)."""
    r = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    x = frames.astype(np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        p = np.pad(x, pad, mode="edge")
        x = sum(w * np.take(p, np.arange(i, i + x.shape[axis]), axis=axis) for i, w in enumerate(k))
    return x


def _degrade(frames: np.ndarray, rng: np.random.Generator, sigma: float = 1.0, noise: float = 8.0) -> np.ndarray:
    return np.clip(_blur(frames, sigma) + rng.normal(0, noise, frames.shape), 0, 255).round().astype(np.uint8)


def test_same_seed_and_index_give_the_same_pixels():
    for i in range(5):
        a, b = attributes_for(i, seed=3), attributes_for(i, seed=3)
        assert a == b
        assert np.array_equal(render_clip(a, 17, 64), render_clip(b, 17, 64))
    assert [attributes_for(i, 3) for i in range(8)] != [attributes_for(i, 4) for i in range(8)]
    assert len({str(attributes_for(i, 3)) for i in range(50)}) == 50


def test_shape_dtype_and_prefix():
    a = attributes_for(1, 0)
    for t in (1, 17, MAX_FRAMES):
        for size in (64, 128):
            clip = render_clip(a, t, size)
            assert clip.shape == (t, size, size, 3) and clip.dtype == np.uint8
    # Speed is per frame: a short clip is the long one's start, and a minute renders too.
    assert np.array_equal(render_clip(a, 17, 64), render_clip(a, MAX_FRAMES, 64)[:17])
    assert np.array_equal(render_clip(a, MAX_FRAMES, 64), render_clip(a, 481, 64)[:MAX_FRAMES])
    with pytest.raises(ValueError, match="num_frames"):
        render_clip(a, 0, 64)


def test_only_length_one_drops_the_motion():
    for i in range(20):
        video, image = attributes_for(i, 1, 17), attributes_for(i, 1, 1)
        assert image["motion"] == "still" and image["speed"] is None
        assert {k: v for k, v in video.items() if k not in ("motion", "speed")} == \
               {k: v for k, v in image.items() if k not in ("motion", "speed")}
        assert (video["speed"] is None) == (video["motion"] == "still")


def test_shape_wraps_around_the_edges_and_keeps_its_area():
    """The frame is a torus: shapes start anywhere and cross the edges, and every frame of a
    minute-long clip shows the whole shape's area, split over two edges or not."""
    wrapped = 0
    for size, clips in ((32, 100), (64, 100), (128, 30)):
        for i in range(clips):
            a = attributes_for(i, 11)
            clip = render_clip(a, 481, size)
            bg, fg = np.array(BACKGROUNDS[a["background"]]), np.array(COLOURS[a["colour"]])
            wrapped += any((f[0] != bg).any() or (f[:, 0] != bg).any() for f in clip[::20])
            # The same covered area (pixels) in every frame, read on the channel where colour and
            # background differ most.
            c = int(np.argmax(np.abs(fg - bg)))
            area = (clip[..., c].astype(np.float32) - bg[c]).sum(axis=(1, 2)) / (fg[c] - bg[c])  # (T,)
            assert area.min() > 0.9 * area.max(), (size, a)  # anti-aliasing varies it a little
            fill = {"circle": np.pi / 4, "square": 1, "triangle": 0.5, "diamond": 0.5, "cross": 5 / 9}[a["shape"]]
            assert area.max() == pytest.approx(SIZES[a["size"]] ** 2 * size ** 2 * fill, rel=0.15)
    assert wrapped > 150  # most shapes touch an edge within a minute


def test_a_shape_leaving_one_edge_enters_at_the_other():
    a = {"shape": "square", "colour": "red", "size": "small", "motion": "right", "speed": "fast",
         "background": "black", "x": 0.8, "y": 0.5}
    clip = render_clip(a, 9, 64)  # the centre moves 8 / 32 = 0.25: from x 0.8 to 1.05 = 0.05
    red = (clip[..., 0] > 120)  # (T, H, W)
    cols = np.nonzero(red[-1].any(0))[0]
    assert cols.min() == 0 and cols.max() == 63 and not red[-1, :, 16:48].any()  # split over both edges
    rows = np.nonzero(red[-1].any(1))[0]
    assert rows.mean() == pytest.approx(np.nonzero(red[0].any(1))[0].mean())  # no vertical drift


def test_speeds_move_whole_latent_cells_per_latent_frame_at_128_px():
    """A caption's motion shifts the shape's codes by whole cells of the tokenizer's grid."""
    cfg = TokenizerConfig()
    for v in SPEEDS.values():
        cells = v * 128 * cfg.temporal_downsample / cfg.spatial_downsample
        assert cells >= 1 and cells == round(cells), (v, cells)


def test_motion_moves_the_shape_as_the_attributes_say():
    for i in range(30):
        a = dict(attributes_for(i, 2, MAX_FRAMES), x=0.5, y=0.5)  # centred: no wrap within 9 frames
        clip = render_clip(a, 9, 128)
        inside = (clip != np.array(BACKGROUNDS[a["background"]], np.uint8)).any(-1)
        xs = np.nonzero(inside[-1].any(0))[0].mean() - np.nonzero(inside[0].any(0))[0].mean()
        ys = np.nonzero(inside[-1].any(1))[0].mean() - np.nonzero(inside[0].any(1))[0].mean()
        step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}[a["motion"]]
        v = 0.0 if a["speed"] is None else SPEEDS[a["speed"]] * 8 * 128
        assert xs == pytest.approx(step[0] * v, abs=1.0) and ys == pytest.approx(step[1] * v, abs=1.0), a
        track = centre_track(a, 9)
        assert np.allclose(track[1:] - track[:-1], track[1] - track[0])  # constant speed


def test_still_share_sets_the_share_of_still_clips_and_leaves_the_rest_alone():
    n = 4000
    keep = ("shape", "colour", "size", "background", "x", "y")
    plain = [{k: a[k] for k in keep} for a in (attributes_for(i, 5, 17) for i in range(50))]
    for share in (0.0, 0.5, 1.0):
        attrs = [attributes_for(i, 5, 17, still_share=share) for i in range(n)]
        motions = Counter(a["motion"] for a in attrs)
        assert motions["still"] / n == pytest.approx(share, abs=0.03)
        if share < 1:  # the moving clips spread evenly over the four directions
            moving = n - motions["still"]
            for m in ("left", "right", "up", "down"):
                assert motions[m] / moving == pytest.approx(0.25, abs=0.03), (share, motions)
        # a still clip has no speed; the other attributes are drawn as without the option
        assert all((a["speed"] is None) == (a["motion"] == "still") for a in attrs)
        assert [{k: a[k] for k in keep} for a in attrs[:50]] == plain
    # the default is the five motions alike, as corpora rendered before the option was drawn
    motions = Counter(attributes_for(i, 5, 17)["motion"] for i in range(n))
    assert all(c / n == pytest.approx(0.2, abs=0.03) for c in motions.values()) and len(motions) == 5


def test_start_grid_puts_every_object_at_one_place_within_the_latent_cells():
    keep = ("shape", "colour", "size", "motion", "speed", "background")
    for i in range(40):
        plain, snapped = attributes_for(i, 5, 17, 0.5), attributes_for(i, 5, 17, 0.5, start_grid=16)
        assert {k: snapped[k] for k in keep} == {k: plain[k] for k in keep}  # only the start moves
        for k in ("x", "y"):
            assert snapped[k] * 16 == int(snapped[k] * 16) and 0 <= plain[k] - snapped[k] < 1 / 16, (plain, snapped)
    # Two snapped clips of one shape and size: frame 0 of one is the other's, moved by whole 8-px cells; and a
    # moving clip's frames 4 and 8 (the last frame of latent frames 1 and 2) are its frame 0, moved so.
    ref = dict(attributes_for(0, 5, 17, start_grid=16), shape="triangle", size="small", x=0.0, y=0.0)
    ref_pixels = object_pixels(ref, 1, 128)[0]
    for i in range(12):
        a = dict(attributes_for(i, 6, 17, 0.0, start_grid=16), shape="triangle", size="small")
        pixels = object_pixels(a, 9, 128)
        cells = round(a["y"] * 16), round(a["x"] * 16)
        assert np.array_equal(np.roll(ref_pixels, (8 * cells[0], 8 * cells[1]), axis=(0, 1)), pixels[0]), a
        step = np.array({"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[a["motion"]])
        per_frame = round(SPEEDS[a["speed"]] * 128)
        for t in (4, 8):
            assert np.array_equal(np.roll(pixels[0], tuple(step * per_frame * t), axis=(0, 1)), pixels[t]), (a, t)


def test_start_inside_shows_the_whole_shape_in_frame_0_and_draws_the_rest_as_without_it():
    keep = ("shape", "colour", "size", "motion", "speed", "background")
    seen = set()
    for grid in (None, 16):
        for i in range(300):
            plain, inside = attributes_for(i, 7, 17, 0.5, grid), attributes_for(i, 7, 17, 0.5, grid, start_inside=True)
            assert {k: inside[k] for k in keep} == {k: plain[k] for k in keep}
            if grid:
                assert all(inside[k] * grid == int(inside[k] * grid) for k in ("x", "y")), inside
            # the object's pixels in frame 0, found with no wrap: at least 2 px (START_MARGIN) from every edge
            rows, cols = np.nonzero(object_pixels(inside, 1, 128)[0])
            assert min(rows.min(), cols.min()) >= 2 and max(rows.max(), cols.max()) <= 125, inside
            if grid:
                seen.add((inside["size"], inside["x"]))
    # on the grid every allowed centre is drawn, the extremes included: from 2/16 to 14/16 for a small shape
    # (half its side 1.6 cells, and 2 px), 3/16 to 13/16 for a large one (2.7 cells)
    assert {x for size, x in seen if size == "small"} == {k / 16 for k in range(2, 15)}
    assert {x for size, x in seen if size == "large"} == {k / 16 for k in range(3, 14)}


def test_vocabulary_is_covered_and_backgrounds_contrast():
    attrs = [attributes_for(i, 5, 17) for i in range(600)]
    assert {a["shape"] for a in attrs} == set(SHAPES)
    assert {a["colour"] for a in attrs} == set(COLOURS)
    assert {a["background"] for a in attrs} == set(BACKGROUNDS)
    assert {a["size"] for a in attrs} == set(SIZES)
    assert {a["motion"] for a in attrs} == {"left", "right", "up", "down", "still"}
    for colour in COLOURS:
        assert len(backgrounds_for(colour)) >= 2
    for a in attrs:
        assert a["background"] in backgrounds_for(a["colour"])
        assert np.linalg.norm(np.subtract(COLOURS[a["colour"]], BACKGROUNDS[a["background"]])) >= MIN_CONTRAST


def test_caption_states_the_attributes():
    a = {"shape": "circle", "colour": "red", "size": "large", "motion": "left", "speed": "fast",
         "background": "black", "x": 0.5, "y": 0.5}
    assert caption(a, 17) == "a large red circle moving left quickly on a black background"
    assert caption(a, 1) == "a large red circle on a black background"
    assert caption(dict(a, motion="still", speed=None), 17) == "a large red circle standing still on a black background"
    for i in range(100):
        t = (1, 17, 65)[i % 3]
        a = attributes_for(i, 9, t)
        text = caption(a, t)
        assert text.startswith(f"a {a['size']} {a['colour']} {a['shape']} ")
        assert text.endswith(f" on a {a['background']} background")
        if t == 1:
            assert "moving" not in text and "still" not in text
        elif a["motion"] == "still":
            assert "standing still" in text
        else:
            assert f" moving {a['motion']} {ADVERBS[a['speed']]} " in text


def test_held_out_appearances_are_a_fixed_share_and_leave_every_pair_in_training():
    every = all_appearances()
    assert len(every) == len(set(every)) == 240
    held = held_out_appearances(0.2, seed=0)
    assert len(held) == 48 and held <= set(every)
    assert held == held_out_appearances(0.2, seed=0) and held != held_out_appearances(0.2, seed=1)
    assert held_out_appearances(0.0) == frozenset()
    train = [a for a in every if a not in held]
    for i in range(4):  # every value of an attribute next to every value of another, as training shows them
        for j in range(i + 1, 4):
            assert {(a[i], a[j]) for a in every} == {(a[i], a[j]) for a in train}, (i, j)


def test_split_follows_the_appearance_whatever_the_seed_or_motion():
    held = held_out_appearances(0.2)
    clips = [attributes_for(i, seed, 65) for seed in (0, 7) for i in range(1500)]
    splits = [split_for(a, held) for a in clips]
    assert all((s == "held_out") == (appearance(a) in held) for a, s in zip(clips, splits))
    assert 0.14 < splits.count("held_out") / len(splits) < 0.26
    # Clips of one held-out appearance are held out in every motion: none reaches training.
    shown = {appearance(a) for a, s in zip(clips, splits) if s == "train"}
    assert not shown & held
    assert {a["motion"] for a, s in zip(clips, splits) if s == "held_out"} == set(MOTIONS)


@pytest.mark.parametrize("size", [64, 128])
def test_detect_attributes_on_clean_and_degraded_clips(size):
    """Read back the known attributes of rendered clips, clean and after blur (sigma 1 px) + noise
    (sigma 8 of 255); every shape, colour and motion appears among the clips."""
    rng = np.random.default_rng(0)
    wrong = {"clean": Counter(), "degraded": Counter()}
    cases = [(i, (1, 17)[i % 2]) for i in range(40)]
    for i, t in cases:
        a = attributes_for(i, 21, t)
        clip = render_clip(a, t, size)
        for name, frames in (("clean", clip), ("degraded", _degrade(clip, rng))):
            for key, ok in compare_attributes(a, detect_attributes(frames)).items():
                wrong[name][key] += not ok
    seen = [attributes_for(i, 21, t) for i, t in cases]
    assert {a["shape"] for a in seen} == set(SHAPES) and {a["colour"] for a in seen} == set(COLOURS)
    assert {a["motion"] for a in seen} == {"left", "right", "up", "down", "still"}
    assert sum(wrong["clean"].values()) == 0, wrong
    for key in CHECKED:
        assert wrong["degraded"][key] <= 1, (key, wrong)  # >= 97.5% per attribute


def test_detect_follows_a_shape_across_the_edges_for_a_minute():
    """Ten-second windows of minute-long clips: the shape wraps around the edges several times,
    and every window still reads back all six attributes (after blur and noise)."""
    rng = np.random.default_rng(4)
    wrong = Counter()
    for i in range(12):
        a = attributes_for(i, 8, 481)
        clip = _degrade(render_clip(a, 481, 64), rng)
        for start in range(0, 480, 80):
            for key, ok in compare_attributes(a, detect_attributes(clip[start:start + 80])).items():
                wrong[key] += not ok
    assert sum(wrong.values()) <= 2, wrong


def test_detect_measures_size_and_velocity():
    a = {"shape": "square", "colour": "blue", "size": "large", "motion": "down", "speed": "slow",
         "background": "white", "x": 0.5, "y": 0.3}
    d = detect_attributes(_degrade(render_clip(a, 17, 128), np.random.default_rng(1)))
    assert compare_attributes(a, d) == {k: True for k in CHECKED}
    assert d["measured"]["side"] == pytest.approx(SIZES["large"], rel=0.03)
    assert d["measured"]["velocity"] == pytest.approx([0.0, SPEEDS["slow"]], abs=3e-4)
    assert d["measured"]["blur"] < 2.0  # rough: the test blur is 1 pixel


def test_detect_on_a_plain_frame_finds_no_shape():
    frames = np.full((5, 64, 64, 3), BACKGROUNDS["grey"], np.uint8)
    d = detect_attributes(frames)
    assert d["background"] == "grey" and d["shape"] is None and d["colour"] is None and d["motion"] is None
    with pytest.raises(ValueError, match="T, H, W, 3"):
        detect_attributes(frames[0, ..., 0])
