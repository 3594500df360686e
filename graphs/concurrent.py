"""Many graph runs at once: the simulator, the adapter and the judge all fan out the same way."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Sequence, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


async def run_all(items: Sequence[T], work: Callable[[T], Awaitable[R]], *, concurrency: int, desc: str,
                  unit: str, progress: bool = True) -> list[R]:
    """`work(item)` for every item, `concurrency` in flight (so an in-process model batches them), one bar."""
    gate = asyncio.Semaphore(concurrency)
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress) as bar:

        async def one(item: T) -> R:
            async with gate:
                result = await work(item)
            bar.update(1)
            return result

        return await asyncio.gather(*(one(item) for item in items))


def failure_text(exc: BaseException) -> str:
    """An exception as the one line stored with what it made fail."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
