"""Reading a talking-head video: its header, its frames at a chosen rate (cropped and scaled), its sound.

Everything goes through the ffmpeg binary bundled with imageio-ffmpeg (as the MP4
export does), so any container and codec it reads works without a system ffmpeg.
Frames stream through a pipe one at a time, so memory does not grow with the
clip; the header is read first and absurd sizes or lengths are refused before
any frame is decoded (docs/architecture.md, "Limits").
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from emotalker.core.base.errors import InputError
from emotalker.core.base.limits import MAX_AUDIO_SECONDS, MAX_FRAMES, MAX_IMAGE_SIDE, check_audio_seconds, check_frame_count

MIN_SECONDS = 1.0
"""Shortest video tracked: A2E learns from audio context, and the fit's smoothness needs frames around each frame."""
AUDIO_RATE = 16000


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int  # as displayed (a phone's rotation applied)
    height: int
    duration: float  # seconds
    has_audio: bool


@dataclass(frozen=True)
class Crop:
    """A square of the source frames (x, y: its top-left corner, side: its size, in source pixels) scaled to `size`."""

    x: int
    y: int
    side: int
    size: int

    def points(self, pts: np.ndarray) -> np.ndarray:
        """Source pixel coordinates [..., 2] (corner origin) -> the cropped, scaled frame's."""
        return ((pts - np.array([self.x, self.y], np.float32)) * (self.size / self.side)).astype(np.float32)

    def filter(self) -> str:
        return f"crop={self.side}:{self.side}:{self.x}:{self.y},scale={self.size}:{self.size}:flags=area"


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def probe(path: str | os.PathLike) -> VideoInfo:
    """The video's displayed size, duration and whether it has sound, from ffmpeg's reading of its header;
    one InputError naming the file when it is missing, not a video, or too small, large or long."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "video not found")
    text = subprocess.run([_ffmpeg(), "-hide_banner", "-nostdin", "-i", os.fspath(path)],
                          capture_output=True, text=True, errors="replace").stderr
    video = re.search(r"Stream #\S+.*?: Video: .*?, (\d+)x(\d+)", text)
    if video is None:
        last = text.strip().splitlines()[-1] if text.strip() else "no output"
        raise InputError(path, f"not a readable video (ffmpeg: {last})")
    width, height = int(video.group(1)), int(video.group(2))
    rotation = re.search(r"rotate\s*:\s*(-?\d+)|rotation of (-?[\d.]+) degrees", text)
    if rotation and round(float(rotation.group(1) or rotation.group(2))) % 180 == 90:
        width, height = height, width
    duration = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", text)
    if duration is None:
        raise InputError(path, "the video's header gives no duration")
    seconds = 3600 * int(duration.group(1)) + 60 * int(duration.group(2)) + float(duration.group(3))
    info = VideoInfo(path, width, height, seconds, re.search(r"Stream #\S+.*?: Audio: ", text) is not None)
    _check_size(info)
    return info


def _check_size(info: VideoInfo) -> None:
    if not (16 <= info.width <= MAX_IMAGE_SIDE and 16 <= info.height <= MAX_IMAGE_SIDE):
        raise InputError(info.path, f"video is {info.width}x{info.height}; sides must be 16..{MAX_IMAGE_SIDE} pixels")
    check_audio_seconds(info.duration, MAX_AUDIO_SECONDS, info.path)
    if info.duration < MIN_SECONDS:
        raise InputError(info.path, f"video lasts {info.duration:.2f} s, less than the {MIN_SECONDS:g} s a clip needs")


def read_frames(info: VideoInfo, fps: float, crop: Crop | None = None) -> Iterator[np.ndarray]:
    """The video's frames resampled to `fps` (ffmpeg's fps filter), each uint8 [H,W,3] RGB, cropped and scaled
    when `crop` is given. One frame in memory at a time; ffmpeg stops when the iterator is closed."""
    check_frame_count(int(np.ceil(info.duration * fps)), MAX_FRAMES, info.path, f"{info.duration:.1f} s at {fps:g} fps")
    w, h = (crop.size, crop.size) if crop else (info.width, info.height)
    vf = f"fps={fps:g}" + (f",{crop.filter()}" if crop else "")
    cmd = [_ffmpeg(), "-nostdin", "-loglevel", "error", "-i", os.fspath(info.path), "-map", "0:v:0", "-vf", vf,
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        try:
            while True:
                buf = proc.stdout.read(w * h * 3)
                if len(buf) < w * h * 3:
                    break
                yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
            if proc.wait() != 0:
                log.seek(0)
                said = log.read().decode(errors="replace").strip()[-300:]
                raise InputError(info.path, f"ffmpeg could not decode the video: {said}")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def extract_audio(info: VideoInfo, dst: str | os.PathLike, seconds: float) -> None:
    """The video's first sound track as 16 kHz mono PCM WAV at `dst`, cut at or padded with silence to `seconds`
    (the frames' span); InputError naming the video when it has none, or only silence."""
    from emotalker.core.audio.waveform import load_audio
    from emotalker.core.base.fileio import atomic_path

    if not info.has_audio:
        raise InputError(info.path, "video has no sound track; the avatar learns its mouth from the speech")
    with atomic_path(dst) as tmp:
        cmd = [_ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-i", os.fspath(info.path), "-map", "0:a:0",
               "-ac", "1", "-ar", str(AUDIO_RATE), "-af", "apad", "-t", f"{seconds:.6f}", "-c:a", "pcm_s16le",
               "-f", "wav", os.fspath(tmp)]
        run = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        if run.returncode != 0:
            raise InputError(info.path, f"ffmpeg could not read the sound: {run.stderr.strip()[-300:]}")
        try:
            load_audio(tmp)  # refuses silence, as every audio input does
        except InputError as exc:
            raise InputError(info.path, f"sound track: {exc.problem}") from None
