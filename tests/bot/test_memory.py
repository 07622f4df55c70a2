"""The decode memory budget: big decodes take turns, none waits forever, all are released."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from PIL import Image

from bot import media
from bot.memory import MemoryBudget, image_cost
from tests.media_factory import local_file

MiB = 1024 * 1024


def test_holds_over_the_budget_take_turns_and_small_ones_share() -> None:
    budget = MemoryBudget(100 * MiB)
    inside: list[int] = []
    crowded: list[list[int]] = []
    lock = threading.Lock()

    def work(amount: int) -> None:
        with budget.hold(amount):
            with lock:
                inside.append(amount)
                if len(inside) > 1 and sum(inside) > budget.limit:
                    crowded.append(list(inside))
            time.sleep(0.05)
            with lock:
                inside.remove(amount)

    threads = [threading.Thread(target=work, args=(60 * MiB,)) for _ in range(3)]
    threads += [threading.Thread(target=work, args=(10 * MiB,)) for _ in range(3)]
    threads.append(threading.Thread(target=work, args=(500 * MiB,)))  # larger than it all
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert crowded == []  # never more than the budget at once; the oversized one alone
    assert budget.used == 0


def test_an_rgb_image_costs_four_bytes_a_pixel_and_room_to_work() -> None:
    assert image_cost(8000, 8000, "RGB") == int(8000 * 8000 * 4 * 1.25)
    assert image_cost(100, 100, "L", copies=2) == int(100 * 100 * 2.25)


async def test_saves_under_a_small_budget_all_finish_and_release_it(tmp_path: Path) -> None:
    budget = MemoryBudget(64 * MiB)  # each 3000×3000 image costs 43 MiB: they take turns
    limits = media.MediaLimits(memory=budget)
    image = tmp_path / "big.png"
    Image.new("RGB", (3000, 3000), (10, 20, 30)).save(image)
    checked = await asyncio.gather(
        *(media.check_file(local_file(image), tmp_path / "work", limits=limits) for _ in range(4))
    )
    assert [c.info.width for c in checked] == [3000] * 4
    assert budget.used == 0
