"""Video I/O with PyAV: frame picking by time, resize + centre crop, writers, errors that name the file."""

import numpy as np
import pytest
from PIL import Image

from loong_dist.errors import VideoError
from loong_dist.io.video import frame_strip, probe_video, read_clip, write_gif, write_mp4

FPS = 24
N = 48  # 2 s


def _frame_index(frames):
    """Recover the source frame index written by `indexed_video` from the centre pixels."""
    cy, cx = frames.shape[1] // 2, frames.shape[2] // 2
    centre = frames[:, cy - 2:cy + 2, cx - 2:cx + 2]
    r, g = centre[..., 0].mean(axis=(1, 2)), centre[..., 1].mean(axis=(1, 2))
    return (np.round(r / 10) + 24 * np.round(g / 120)).astype(int).tolist()


@pytest.fixture(scope="module")
def indexed_video(tmp_path_factory):
    """A 160x96 (landscape) 24 fps video whose frame i shows i in its colour; the left and right
    margins (cut by a centre crop) are pure blue."""
    frames = np.zeros((N, 96, 160, 3), np.uint8)
    for i in range(N):
        frames[i, ..., 0] = (i % 24) * 10
        frames[i, ..., 1] = (i // 24) * 120
    frames[:, :, :24, 2] = 255
    frames[:, :, -24:, 2] = 255
    path = tmp_path_factory.mktemp("video") / "indexed.mp4"
    write_mp4(path, frames, fps=FPS, crf=0)
    return path


def test_probe(indexed_video):
    info = probe_video(indexed_video)
    assert (info.width, info.height, info.fps, info.num_frames) == (160, 96, 24.0, 48)
    assert info.duration == pytest.approx(2.0, abs=0.05)


def test_native_rate_reads_every_frame(indexed_video):
    clip = read_clip(indexed_video, num_frames=N, fps=None, size=None)
    assert clip.shape == (N, 96, 160, 3) and clip.dtype == np.uint8
    assert _frame_index(clip) == list(range(N))


def test_resample_and_start(indexed_video):
    # 8 fps from a 24 fps source: every third frame, starting at the frame shown at `start`.
    clip = read_clip(indexed_video, start=0.5, num_frames=5, fps=8, size=64)
    assert clip.shape == (5, 64, 64, 3)
    assert _frame_index(clip) == [12, 15, 18, 21, 24]
    # 48 fps from 24 fps: each source frame shown twice.
    assert _frame_index(read_clip(indexed_video, start=1.0, num_frames=6, fps=48, size=64)) == [24, 24, 25, 25, 26, 26]
    # A start between two frames takes the one on screen then.
    assert _frame_index(read_clip(indexed_video, start=0.52, num_frames=1, fps=8, size=64)) == [12]


def test_short_side_resize_and_centre_crop(indexed_video):
    clip = read_clip(indexed_video, num_frames=1, size=48)
    # 160x96 -> 80x48, centre 48x48 crop drops the blue 12-pixel margins (24 px at full size).
    assert clip.shape == (1, 48, 48, 3)
    assert clip[0, :, :, 2].max() < 40
    wider = read_clip(indexed_video, num_frames=1, size=None)
    assert wider[0, :, :10, 2].min() > 200


def test_too_short_says_how_many(indexed_video):
    with pytest.raises(VideoError) as e:
        read_clip(indexed_video, start=1.0, num_frames=17, fps=8)
    assert str(e.value) == f"{indexed_video}: too short: has 8 frames from 1.00 s at 8 fps, asked for 17"


def test_unreadable_files_are_named(tmp_path, indexed_video):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(indexed_video.read_bytes()[: indexed_video.stat().st_size // 2])
    cases = [(empty, "file is empty"), (junk, "not a readable video"), (tmp_path / "none.mp4", "no such file")]
    for path, why in cases:
        with pytest.raises(VideoError, match=f"^{path}: {why}"):
            read_clip(path)
    with pytest.raises(VideoError, match=f"^{cut}: "):  # truncated: unreadable, or too short, by name
        read_clip(cut, num_frames=N)


def test_writers_round_trip(tmp_path):
    y, x = np.mgrid[0:64, 0:64]
    frames = np.stack([np.stack([x * 3 + t * 10, y * 3, (x + y) * 2 - t * 5], -1) for t in range(5)])
    frames = np.clip(frames, 0, 255).astype(np.uint8)  # smooth gradients: what a codec keeps well
    mp4 = write_mp4(tmp_path / "out" / "a.mp4", frames, fps=8, crf=0)
    back = read_clip(mp4, num_frames=5, size=None)
    mse = ((back.astype(float) - frames) ** 2).mean()
    assert 10 * np.log10(255 ** 2 / mse) > 40  # only the yuv420 round trip is lost
    assert read_clip(mp4.read_bytes(), num_frames=5, size=None).shape == frames.shape  # from bytes
    gif = write_gif(tmp_path / "a.gif", frames, fps=8)
    with Image.open(gif) as im:
        assert im.n_frames == 5 and im.size == (64, 64)
    assert frame_strip(frames, n=3).shape == (64, 192, 3)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "b.mp4", frames.astype(np.float32))
    assert not (tmp_path / "b.mp4").exists()
