"""The store and the checkpointer off the event loop, for the batch graphs.

SQLite calls block: a server's event loop must not make them (`langgraph dev` refuses), and a sqlite3
connection belongs to the thread that opened it. So every batch graph reads and writes its store in one
thread, through one connection per store file (`on_store`), and checkpoints the episodes in flight through one
aiosqlite connection per checkpoint file and event loop (`checkpointer`). These are connection pools, not
state: a run's own data travels in its graph state and run context.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from graphs.store import BUSY_TIMEOUT_MS, Store, enable_wal

_STORE_THREAD = ThreadPoolExecutor(1, thread_name_prefix="clca-store")
_stores: dict[Path, Store] = {}
_savers: dict[tuple[Path, asyncio.AbstractEventLoop], asyncio.Task] = {}


async def on_store(path: str | Path, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """`fn(store, *args, **kwargs)` in the store thread, on the store at `path` (created if missing)."""

    def call():
        key = Path(path).resolve()
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = Store(key)
        return fn(store, *args, **kwargs)

    return await asyncio.get_running_loop().run_in_executor(_STORE_THREAD, call)


async def close_store(path: str | Path) -> None:
    """Close the store thread's connection to the store at `path`, if open (a command line's or Python caller's
    run ends; a server's stores stay open). With the checkpointer's closed too, the last connection of the last
    process checkpoints the file and removes its `-wal` and `-shm`."""

    def call():
        store = _stores.pop(Path(path).resolve(), None)
        if store is not None:
            store.close()

    await asyncio.get_running_loop().run_in_executor(_STORE_THREAD, call)


async def checkpointer(store_path: str | Path) -> AsyncSqliteSaver:
    """The checkpointer of episodes in flight (`<db>.checkpoints`), one connection per file and event loop."""
    loop = asyncio.get_running_loop()
    key = (Path(str(store_path) + ".checkpoints").resolve(), loop)
    if key not in _savers:
        _savers[key] = loop.create_task(_open_saver(key[0]))
    return await _savers[key]


async def close_checkpointers() -> None:
    """Close this event loop's checkpoint connections (a command line's loop ends; a server's does not)."""
    loop = asyncio.get_running_loop()
    for key in [k for k in _savers if k[1] is loop]:
        saver = await _savers.pop(key)
        try:
            await saver.conn.close()
        except sqlite3.OperationalError as exc:
            # Closing the last connection checkpoints the WAL, which another process writing the same file can
            # hold up ("database is locked"); every checkpoint is committed already, so nothing is lost.
            if "locked" not in str(exc):
                raise


async def _open_saver(path: Path) -> AsyncSqliteSaver:
    # WAL with synchronous=NORMAL survives a killed process (not a power cut) and saves an fsync per
    # checkpoint, which otherwise bounds the orchestration rate. The switch is the store's, retried: two
    # processes opening a new checkpoint file together get "database is locked" from it at once.
    await asyncio.to_thread(_switch_to_wal, path)
    conn = await aiosqlite.connect(path)
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA synchronous = NORMAL")
    return AsyncSqliteSaver(conn)


def _switch_to_wal(path: Path) -> None:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        enable_wal(conn)
    finally:
        conn.close()
