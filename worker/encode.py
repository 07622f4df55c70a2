"""The pipeline's frames written as the MP4 the bot downloads.

Through ``adapters.mp4``, the writer the storyboard uses too: H.264 in yuv420p with the moov atom
first, at Wan's 16 fps, with the quality ``R2V_WORKER_CRF`` asks for. x264's ``medium`` preset:
next to minutes of denoising, encoding is cheap, and the smaller file delivers sooner.
Frames are converted to 8 bits and encoded one at a time; the file appears only once complete.
Synchronous: callers run it in a thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av

from adapters.local_files import finished_file
from adapters.mp4 import H264Writer

PRESET = "medium"


def encode_video(frames: Sequence[Any], out: Path, *, fps: int, crf: int) -> int:
    """Write ``frames`` to ``out``; answer how many were written.

    ``frames`` is what the pipeline answers with ``output_type="np"``: ``(height, width, 3)``
    float arrays with values from 0 to 1, one per frame.
    """
    import numpy as np  # the gpu extra's: the bot imports the worker's modules without it

    if len(frames) == 0:
        raise ValueError("there are no frames to encode")
    height, width = np.asarray(frames[0]).shape[:2]
    with (
        finished_file(out) as partial,
        H264Writer(partial, (width, height), fps, crf=crf, preset=PRESET) as writer,
    ):
        for frame in frames:
            pixels = np.clip(np.asarray(frame, dtype=np.float32) * 255.0 + 0.5, 0, 255)
            rgb = np.ascontiguousarray(pixels.astype(np.uint8))
            writer.write(av.VideoFrame.from_ndarray(rgb, format="rgb24"))
        return writer.frames
