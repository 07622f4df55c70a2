"""Writing MP4 files as every video we hand out is written, whoever made its frames.

H.264 in yuv420p (the one pixel format every player and chat preview decodes), a constant frame
rate, the moov atom first (``+faststart``: playback starts before the whole file has arrived),
and a file that appears under its name only once it is complete. The storyboard renderer and the
GPU worker both write through here, so their output cannot drift apart.

Synchronous and CPU-bound: callers run it in a thread. Frames are encoded as they are written, so
memory stays flat whatever the length.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av


class H264Writer:
    """An MP4 being written: one H.264 stream, frames numbered in the order they are written.

    ``crf`` is x264's constant rate factor (0 lossless … 51 worst; 18–23 look good); ``preset``
    trades encoding time for size. ``container`` is open for other streams (a soundtrack) until
    the writer is closed. Used as a context manager, it is flushed and closed on a clean exit and
    only closed after an error (the caller discards the file then).
    """

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        fps: int,
        *,
        crf: int = 20,
        preset: str = "veryfast",
    ) -> None:
        self.container: Any = av.open(
            str(path), "w", format="mp4", options={"movflags": "+faststart"}
        )
        try:
            stream = self.container.add_stream(
                "libx264", rate=fps, options={"preset": preset, "crf": str(crf)}
            )
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = Fraction(1, fps)
        except BaseException:
            self.container.close()
            raise
        self._stream = stream
        self._frames = 0
        self._closed = False

    @property
    def frames(self) -> int:
        """How many frames have been written so far."""
        return self._frames

    def write(self, frame: av.VideoFrame) -> None:
        """Encode the next frame (any pixel format and size: PyAV converts it to the stream's)."""
        frame.pts = self._frames
        self._frames += 1
        self.container.mux(self._stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder and finish the file (the moov atom is moved to the front here)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.container.mux(self._stream.encode(None))
        finally:
            self.container.close()

    def __enter__(self) -> H264Writer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        elif not self._closed:
            self._closed = True
            self.container.close()
