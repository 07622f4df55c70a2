"""Media memory: peak RSS while big-dimension images are saved, and while a video is made of five.

An 8000×8000 PNG of one colour is about 190 KB on disk and 183 MiB decoded: small files with huge
dimensions are what a memory budget is for. Two figures, each above the idle bot's RSS:

- five such images saved at once as characters (``Core.save_character`` through the real
  ``Roster``, ``media.check_file`` decoding and re-saving each), target +300 MiB;
- one ``/generate`` naming five characters made of them, through the real core, engine and
  storyboard provider, from the command to the delivered video, target +300 MiB;
- the five fitted at once to a hosted provider's 2048 px side limit (``fit_reference``, what
  the engine does before submitting to one), under the default budget, target +300 MiB.

Each runs on the whole bot as ``r2v run`` wires it (``tests.harness.running_bot``), in its own
temporary folder, so the figures include everything a real save or generation holds.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
from pathlib import Path

from PIL import Image

from bench.common import Figure, MiB, Result, RssSampler, cached, main, memory_kib
from bot.fitting import fit_reference
from bot.memory import MemoryBudget
from bot.models import MediaKind
from bot.ports import Capabilities
from bot.settings import Settings
from tests.harness import USER, running_bot
from tests.media_factory import local_file

SIDE = 8000
COUNT = 5
TARGET_MIB = 300.0
TIME_LIMIT = 600.0
DEFAULT_BUDGET_MB = Settings.model_fields["media_memory_mb"].default


def big_png() -> Path:
    """An 8000×8000 PNG of one colour (cached: making it takes a few seconds)."""
    return cached(
        f"flat-{SIDE}.png",
        lambda path: Image.new("RGB", (SIDE, SIDE), (40, 90, 160)).save(path, compress_level=9),
    )


async def run() -> Result:
    image = big_png()
    notes = [f"Each image: {SIDE}×{SIDE} PNG, {image.stat().st_size / 1024:.0f} KB on disk."]
    with tempfile.TemporaryDirectory(prefix="r2v-bench-media-") as folder:
        async with running_bot(Path(folder), public=False) as bot:
            gc.collect()
            idle = memory_kib()
            with RssSampler() as saving:
                replies = await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            bot.app.core.save_character(USER, f"c{i}", [local_file(image)])
                            for i in range(COUNT)
                        )
                    ),
                    TIME_LIMIT,
                )
            saved = all(not r.is_error for r in replies)
            notes += [f"Save refused: {r.text}" for r in replies if r.is_error]
            gc.collect()
            before = memory_kib()
            with RssSampler() as making:
                job_id = await bot.generate(" ".join(f"@c{i}" for i in range(COUNT)), duration=2)
                job = await bot.finished(job_id, within=TIME_LIMIT)
            made = job.state.value == "delivered"
            if not made:
                notes.append(f"The generation ended {job.state}: {job.reason}")
            gc.collect()
            ready = memory_kib()
            budget = MemoryBudget(DEFAULT_BUDGET_MB * MiB)
            caps = Capabilities(name="hosted", max_image_side=2048)
            work = Path(folder) / "fitting"
            with RssSampler() as fitting:
                fitted = await asyncio.gather(
                    *(
                        fit_reference(
                            image, MediaKind.IMAGE, "image/png", caps, work, memory=budget
                        )
                        for _ in range(COUNT)
                    )
                )
            fits = all(f is not None and f.note.startswith("resized to 2048×2048") for f in fitted)
    figures = (
        Figure(
            f"{COUNT} saves at once: peak RSS above idle",
            (saving.peak_kib - idle) / 1024,
            "MiB",
            TARGET_MIB,
        ),
        Figure(
            f"a generation with {COUNT} references (storyboard): peak RSS above idle",
            (making.peak_kib - before) / 1024,
            "MiB",
            TARGET_MIB,
        ),
        Figure(
            f"{COUNT} references fitted at once to 2048 px: peak RSS above idle",
            (fitting.peak_kib - ready) / 1024,
            "MiB",
            TARGET_MIB,
        ),
    )
    return Result(
        name="media_memory",
        title=f"Media memory: {SIDE}×{SIDE} images saved and used (target +{TARGET_MIB:g} MiB)",
        figures=figures,
        notes=tuple(notes),
        checks_passed=saved and made and fits,
    )


if __name__ == "__main__":
    main(run)
