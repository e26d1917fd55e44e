"""Procedural captioned clips: determinism, geometry, captions, and reading attributes back from pixels."""

from collections import Counter

import numpy as np
import pytest

from loong_dist.data.synthetic import (
    ADVERBS, BACKGROUNDS, CHECKED, COLOURS, MAX_FRAMES, MIN_CONTRAST, SHAPES, SIZES, SPEEDS, attributes_for,
    backgrounds_for, caption, centre_track, compare_attributes, detect_attributes, render_clip, split_for)


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
    # Speed is per frame and the path is planned for MAX_FRAMES: a short clip is the long one's start.
    assert np.array_equal(render_clip(a, 17, 64), render_clip(a, MAX_FRAMES, 64)[:17])
    with pytest.raises(ValueError, match="num_frames"):
        render_clip(a, MAX_FRAMES + 4, 64)


def test_only_length_one_drops_the_motion():
    for i in range(20):
        video, image = attributes_for(i, 1, 17), attributes_for(i, 1, 1)
        assert image["motion"] == "still" and image["speed"] is None
        assert {k: v for k, v in video.items() if k not in ("motion", "speed")} == \
               {k: v for k, v in image.items() if k not in ("motion", "speed")}
        assert (video["speed"] is None) == (video["motion"] == "still")


def test_shape_stays_inside_the_frame_for_65_frames():
    for size, clean, clips in ((32, 1, 150), (64, 2, 150), (128, 5, 50)):  # clean: pure-background ring (pixels)
        for i in range(clips):
            a = attributes_for(i, 11)
            clip = render_clip(a, MAX_FRAMES, size)
            bg, fg = np.array(BACKGROUNDS[a["background"]]), np.array(COLOURS[a["colour"]])
            for ring in (clip[:, :clean], clip[:, -clean:], clip[:, :, :clean], clip[:, :, -clean:]):
                assert (ring == bg.astype(np.uint8)).all(), (size, a)
            # The whole shape is in every frame: the same covered area (pixels) from first to last,
            # read on the channel where colour and background differ most.
            c = int(np.argmax(np.abs(fg - bg)))
            area = (clip[..., c].astype(np.float32) - bg[c]).sum(axis=(1, 2)) / (fg[c] - bg[c])  # (T,)
            assert area.min() > 0.9 * area.max(), (size, a)  # anti-aliasing varies it a little


def test_motion_moves_the_shape_as_the_attributes_say():
    for i in range(30):
        a = attributes_for(i, 2, MAX_FRAMES)
        clip = render_clip(a, MAX_FRAMES, 128)
        inside = (clip != np.array(BACKGROUNDS[a["background"]], np.uint8)).any(-1)
        xs = np.nonzero(inside[-1].any(0))[0].mean() - np.nonzero(inside[0].any(0))[0].mean()
        ys = np.nonzero(inside[-1].any(1))[0].mean() - np.nonzero(inside[0].any(1))[0].mean()
        step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}[a["motion"]]
        v = 0.0 if a["speed"] is None else SPEEDS[a["speed"]] * (MAX_FRAMES - 1) * 128
        assert xs == pytest.approx(step[0] * v, abs=1.0) and ys == pytest.approx(step[1] * v, abs=1.0), a
        track = centre_track(a, MAX_FRAMES)
        assert np.allclose(track[1:] - track[:-1], track[1] - track[0])  # constant speed


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


def test_split_share_is_stable():
    splits = [split_for(i, 0, 0.1) for i in range(3000)]
    assert splits == [split_for(i, 0, 0.1) for i in range(3000)]
    assert 0.08 < splits.count("held_out") / len(splits) < 0.12
    assert set(split_for(i, 0, 0.0) for i in range(100)) == {"train"}


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
