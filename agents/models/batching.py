"""Batching for in-process engines: concurrent requests from many episodes meet in one call."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Sequence

from agents.models.base import Completion, GenerationParams, Message


class BatchingBackend:
    """Collects concurrent requests and hands them to `_generate_batch` together.

    Requests that arrive while a batch is running queue up and form the next batch, so with N
    episodes in flight each call sees up to N prompts, whatever their decoding params: speaker turns
    (sampled) and observer labels (greedy) share a batch.
    """

    transient_errors: tuple[type[BaseException], ...] = ()
    gather_s = 0.1  # longest wait for a batch to fill; a full batch starts at once

    def __init__(self, max_batch: int = 8):
        self.max_batch = max_batch
        self._queues: dict[int, asyncio.Queue] = {}
        self._workers: dict[int, asyncio.Task] = {}

    async def agenerate(self, messages: Sequence[Message], params: GenerationParams, task: str) -> Completion:
        loop = asyncio.get_running_loop()
        key = id(loop)
        if key not in self._queues or self._workers[key].done():
            self._queues[key] = asyncio.Queue()
            self._workers[key] = loop.create_task(self._work(self._queues[key]))
        future = loop.create_future()
        await self._queues[key].put((list(messages), params, future))
        return await future

    async def _work(self, queue: asyncio.Queue) -> None:
        while True:
            pending = [await queue.get()]
            # Wait briefly for the batch to fill: episodes whose requests were answered together ask
            # again within milliseconds of each other, and a request that starts alone keeps the
            # others waiting for a whole batch.
            # (Polled, not `wait_for(queue.get())`: a get cancelled by a timeout can drop an item on 3.11.)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.gather_s
            while len(pending) < self.max_batch and (not queue.empty() or loop.time() < deadline):
                if queue.empty():
                    await asyncio.sleep(0.005)
                else:
                    pending.append(queue.get_nowait())
            try:
                outs = await asyncio.to_thread(self._generate_batch, [(m, p) for m, p, _ in pending])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                for _, _, fut in pending:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, _, fut), out in zip(pending, outs):
                if not fut.done():
                    fut.set_result(out)

    def _generate_batch(self, requests: list[tuple[list[Message], GenerationParams]]) -> list[Completion]:
        raise NotImplementedError


def batch_seed(seeds: Sequence[int]) -> int:
    """One seed for a batch, fixed by the (unordered) seeds of its requests."""
    digest = hashlib.sha256(json.dumps(sorted(seeds)).encode()).digest()
    return int.from_bytes(digest[:4], "big")
