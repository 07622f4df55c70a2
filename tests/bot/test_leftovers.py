"""A save killed half-way leaves temp files; the next start removes them, and nothing else."""

from __future__ import annotations

from pathlib import Path

from tests.harness import running_bot


async def test_temp_files_of_a_killed_save_are_removed_at_the_next_start(tmp_path: Path) -> None:
    work = tmp_path / "data" / "tmp"
    work.mkdir(parents=True)
    left = [work / "incoming-k1ll3d.part", work / "incoming-x7.png", work / "fitted-a1.jpg"]
    for path in left:
        path.write_bytes(b"half a file")
    kept = work / "notes.txt"
    kept.write_text("not ours")
    async with running_bot(tmp_path, public=False):
        assert [p for p in left if p.exists()] == []
        assert kept.exists()
