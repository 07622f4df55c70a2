"""Cutting a list into numbered pages (the roster in chat, the gallery's pages)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Paged(Generic[T]):
    items: tuple[T, ...]
    number: int
    pages: int
    total: int


def page_of(items: Sequence[T], number: int, size: int) -> Paged[T]:
    """Page ``number`` of ``items`` (kept within the pages there are; one page when empty)."""
    pages = max(1, -(-len(items) // size))
    number = min(max(number, 1), pages)
    start = (number - 1) * size
    return Paged(tuple(items[start : start + size]), number, pages, len(items))
