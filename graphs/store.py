"""The SQLite store: one file holds runs, scenarios, episodes, turns, intents and judgements.

Structured events are stored, never rendered prose: a turn is (speaker, action, text, raw, valid),
rendered only at the edges (prompts, TRL rows, pages). WAL mode and a busy timeout let several
processes write the same file. LangGraph's checkpointer keeps episodes in flight in a sidecar file
(`<db>.checkpoints`): sharing one file between the async checkpointer and these synchronous writes
would let one block the event loop while the other holds the write lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random

from agents.provenance import git_commit
from agents.records import Intent, Scenario, Turn

DEFAULT_DB = "runs/clca.db"

# How long a write waits for another process's write to finish before "database is locked".
BUSY_TIMEOUT_MS = 30_000
# Final statuses are never re-run; 'running' resumes from its checkpoint; 'failed' is retried.
FINAL = ("done", "invalid")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def episode_id(scenario_id: str, culture: str, model: str, seed: int, sample: int) -> str:
    """Deterministic, so rerunning a command finds the episodes it already made."""
    key = json.dumps([scenario_id, culture, model, seed, sample])
    return "ep-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def enable_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to write-ahead logging (the file keeps the setting), so readers never block writers.

    The switch needs the file to itself for a moment; when another process is opening the same new file,
    SQLite answers "database is locked" at once rather than waiting out the busy timeout, so it is retried.
    """
    for attempt in Retrying(stop=stop_after_delay(BUSY_TIMEOUT_MS / 1000), wait=wait_random(0.01, 0.1),
                            retry=retry_if_exception(_locked), reraise=True):
        with attempt:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = wal")


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


_CLAIM_FDS: dict[Path, int] = {}


def _claims_fd(path: Path) -> int:
    """One descriptor per claims file for the life of the process: closing any descriptor of a file drops
    every POSIX lock the process holds on it."""
    path = path.resolve()
    if path not in _CLAIM_FDS:
        _CLAIM_FDS[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    return _CLAIM_FDS[path]


@contextmanager
def claim(db: str | Path, key: str) -> Iterator[bool]:
    """Whether this process may work on `key` (an episode id) in the store at `db` now: False while another
    process does.

    Two processes running one episode would both write its LangGraph checkpoint thread and mix their
    turns. A claim is a POSIX lock on one byte of `<db>.claims` (at an offset hashed from the key), which
    the operating system drops when the process ends, a SIGKILL included, so a rerun takes over what a
    killed run left. Within one process claims do not exclude each other (its plan has no duplicates).
    Opens no database connection, so any thread may call it.
    """
    path = Path(db)
    fd = _claims_fd(path.with_name(path.name + ".claims"))
    offset = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)  # 60 bits: collisions are negligible
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)


class Store:
    """The store file; several processes may open and write one at once (see `_writing`)."""

    def __init__(self, path: str | Path = DEFAULT_DB):
        self.path = Path(path)
        self.checkpoint_path = self.path.with_name(self.path.name + ".checkpoints")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(self.path)
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        enable_wal(self.db.conn)
        self.db.execute("PRAGMA synchronous = NORMAL")  # safe under WAL against a killed process
        self._create_tables()
        self._create_failure_table()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction that takes the write lock when it starts.

        A plain (deferred) transaction that reads before it writes gets "database is locked" at once, without
        waiting, when another process wrote in between; BEGIN IMMEDIATE waits up to the busy timeout instead.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def claim(self, key: str):
        """`claim(self.path, key)`."""
        return claim(self.path, key)

    def _create_tables(self) -> None:
        """Create what is missing, in one transaction, so processes that open a new store together agree."""
        t = self.db.table
        with self._writing():
            t("runs").create(
                {"id": str, "command": str, "config": str, "git": str, "started": str, "finished": str,
                 "summary": str},
                pk="id", if_not_exists=True,
            )
            t("scenarios").create(
                {"id": str, "culture": str, "seed_id": str, "source": str, "data": str, "status": str,
                 "model": str, "prompt_version": str, "attempts": int, "error": str, "raw": str, "run_id": str,
                 "git": str, "created": str},
                pk="id", if_not_exists=True,
            )
            t("scenarios").create_index(["culture", "status"], if_not_exists=True)
            t("episodes").create(
                {"id": str, "scenario_id": str, "culture": str, "model": str, "seed": int, "sample": int,
                 "status": str, "ended_by": str, "n_turns": int, "max_turns": int, "prompt_versions": str,
                 "config": str, "git": str, "run_id": str, "error": str, "usage": str, "created": str,
                 "finished": str},
                pk="id", if_not_exists=True,
            )
            t("episodes").create_index(["culture", "status"], if_not_exists=True)
            t("turns").create(
                {"episode_id": str, "idx": int, "speaker": int, "name": str, "action": str, "text": str,
                 "raw": str, "valid": int},
                pk=("episode_id", "idx"), if_not_exists=True,
            )
            t("intents").create(
                {"episode_id": str, "turn_index": int, "intent": str, "reason": str, "cultural": int, "raw": str,
                 "valid": int, "prompt_version": str},
                pk=("episode_id", "turn_index"), if_not_exists=True,
            )
            # One row per (episode, judge model, aspect): aspect is quality, culture, meta or a
            # SOTOPIA-style dimension; label/confidence are None and valid=0 when unparseable.
            t("judgements").create(
                {"episode_id": str, "judge_model": str, "aspect": str, "label": str, "confidence": str,
                 "score": float, "critique": str, "raw": str, "valid": int, "prompt_version": str,
                 "run_id": str, "created": str},
                pk=("episode_id", "judge_model", "aspect"), if_not_exists=True,
            )

    # ------------------------------------------------------------ runs

    def start_run(self, command: str, config: dict) -> str:
        run_id = uuid.uuid4().hex[:12]
        row = {"id": run_id, "command": command, "config": json.dumps(config, sort_keys=True), "git": git_commit(),
               "started": now()}
        with self._writing():
            self.db["runs"].insert(row)
        return run_id

    def finish_run(self, run_id: str, summary: dict) -> None:
        with self._writing():
            self.db["runs"].update(run_id, {"finished": now(), "summary": json.dumps(summary, sort_keys=True)})

    # ------------------------------------------------------------ scenarios

    # A row is a usable scenario (status 'ok', `data` holds the record) or an adaptation that never
    # validated (status 'failed', `data` empty, `error` and the last `raw` answer say why). Rows are
    # replaced whole, so a scenario that succeeds after failing keeps no stale error.

    def put_scenario(self, scenario: Scenario, **meta) -> None:
        with self._writing():
            self.db["scenarios"].insert(self._scenario_row(scenario, meta), pk="id", replace=True, alter=True)

    def put_failed_scenario(self, scenario_id: str, **meta) -> None:
        row = {"id": scenario_id, "data": None, "status": "failed", "created": now(), **meta}
        with self._writing():
            self.db["scenarios"].insert(row, pk="id", replace=True, alter=True)

    def import_scenarios(self, scenarios: Iterable[tuple[Scenario, dict]]) -> None:
        """Store many (scenario, provenance) pairs in one transaction: all of them or, on any error, none."""
        rows = [self._scenario_row(s, meta) for s, meta in scenarios]
        with self._writing():
            self.db["scenarios"].insert_all(rows, pk="id", replace=True, alter=True)

    def add_scenarios(self, scenarios: Iterable[tuple[Scenario, dict]]) -> None:
        """Store the (scenario, provenance) pairs whose ids are not stored yet, leaving stored ones as they are.

        For rows several runs share (the SOTOPIA seeds): two processes adding the same ones at once store
        each once (insert or ignore), where read-then-write would race."""
        rows = [self._scenario_row(s, meta) for s, meta in scenarios]
        with self._writing():
            self.db["scenarios"].insert_all(rows, pk="id", ignore=True, alter=True)

    @staticmethod
    def _scenario_row(scenario: Scenario, meta: dict) -> dict:
        return {"id": scenario.id, "culture": scenario.culture, "source": scenario.source,
                "data": scenario.to_json(), "status": "ok", "error": None, "raw": None, "created": now(), **meta}

    def scenario_row(self, scenario_id: str) -> dict | None:
        rows = list(self.db["scenarios"].rows_where("id = ?", [scenario_id]))
        return rows[0] if rows else None

    def scenario_status(self, scenario_id: str) -> str | None:
        row = self.scenario_row(scenario_id)
        return row["status"] if row else None

    def scenario(self, scenario_id: str) -> Scenario | None:
        row = self.scenario_row(scenario_id)
        return Scenario.from_json(row["data"]) if row and row["data"] else None

    def scenario_rows(self, culture: str | None = None) -> list[dict]:
        """Every row, failed ones included, for inspection."""
        where, args = ("culture = ?", [culture]) if culture else (None, [])
        return list(self.db["scenarios"].rows_where(where, args, order_by="id"))

    def scenarios(self, culture: str | None = None, status: str = "ok") -> list[Scenario]:
        where, args = "status = ?", [status]
        if culture:
            where, args = where + " and culture = ?", [*args, culture]
        return [Scenario.from_json(r["data"]) for r in self.db["scenarios"].rows_where(where, args, order_by="id")]

    # ------------------------------------------------------------ episodes

    def episode(self, ep_id: str) -> dict | None:
        rows = list(self.db["episodes"].rows_where("id = ?", [ep_id]))
        return rows[0] if rows else None

    def begin_episode(self, row: dict) -> None:
        """Record an episode as running, keeping its creation time if it was started before."""
        with self._writing():
            old = self.episode(row["id"])
            self.db["episodes"].upsert(
                {**row, "status": "running", "created": old["created"] if old else now()}, pk="id", alter=True
            )

    def finish_episode(
        self, ep_id: str, status: str, turns: Iterable[Turn], intents: Iterable[Intent], *, ended_by: str | None,
        intent_version: str | None, usage: dict | None = None, error: str | None = None,
    ) -> None:
        """Write an episode's turns, intents and final status in one transaction."""
        turns, intents = list(turns), list(intents)
        with self._writing():
            self.db["turns"].delete_where("episode_id = ?", [ep_id])
            self.db["intents"].delete_where("episode_id = ?", [ep_id])
            self.db["turns"].insert_all(
                {"episode_id": ep_id, "idx": t.index, "speaker": t.speaker, "name": t.name,
                 "action": t.action.value if t.action else None, "text": t.text, "raw": t.raw, "valid": int(t.valid)}
                for t in turns
            )
            self.db["intents"].insert_all(
                {"episode_id": ep_id, "turn_index": i.turn_index, "intent": i.intent, "reason": i.reason,
                 "cultural": int(i.cultural), "raw": i.raw, "valid": int(i.valid), "prompt_version": intent_version}
                for i in intents
            )
            self.db["episodes"].update(
                ep_id,
                {"status": status, "ended_by": ended_by, "n_turns": len(turns), "error": error,
                 "usage": json.dumps(usage or {}, sort_keys=True), "finished": now()},
            )

    def turns(self, ep_id: str) -> list[Turn]:
        return [
            Turn(index=r["idx"], speaker=r["speaker"], name=r["name"], action=r["action"], text=r["text"],
                 raw=r["raw"] or "", valid=bool(r["valid"]))
            for r in self.db["turns"].rows_where("episode_id = ?", [ep_id], order_by="idx")
        ]

    def intents(self, ep_id: str) -> list[Intent]:
        return [
            Intent(turn_index=r["turn_index"], intent=r["intent"], reason=r["reason"] or "",
                   cultural=bool(r["cultural"]), raw=r["raw"] or "", valid=bool(r["valid"]))
            for r in self.db["intents"].rows_where("episode_id = ?", [ep_id], order_by="turn_index")
        ]

    # ------------------------------------------------------------ judgements

    def put_judgements(self, ep_id: str, judge_model: str, rows: Iterable[dict]) -> None:
        """Replace one judge model's verdicts on an episode in one transaction."""
        rows = [{**r, "episode_id": ep_id, "judge_model": judge_model, "created": now()} for r in rows]
        with self._writing():
            self.db["judgements"].delete_where("episode_id = ? and judge_model = ?", [ep_id, judge_model])
            self.db["judgements"].insert_all(rows, alter=True)

    def judgements(self, ep_id: str, judge_model: str | None = None) -> list[dict]:
        where, args = "episode_id = ?", [ep_id]
        if judge_model:
            where, args = where + " and judge_model = ?", [*args, judge_model]
        return list(self.db["judgements"].rows_where(where, args, order_by="judge_model, aspect"))

    def episodes(self, culture: str | None = None, status: str | None = None) -> list[dict]:
        clauses, args = [], []
        if culture:
            clauses.append("culture = ?")
            args.append(culture)
        if status:
            clauses.append("status = ?")
            args.append(status)
        return list(self.db["episodes"].rows_where(" and ".join(clauses) or None, args, order_by="id"))

    # ------------------------------------------------------------ failures

    # One row per (stage, item, model) whose last attempt failed: `reason` groups failures for the summaries,
    # `error` is the example's own line, and a `permanent` failure (the endpoint will refuse it however often it
    # is sent) is left out of reruns until asked for (--retry-failed). Cleared when the item succeeds.

    def _create_failure_table(self) -> None:
        with self._writing():
            self.db["failures"].create(
                {"stage": str, "item_id": str, "model": str, "reason": str, "error": str, "permanent": int,
                 "run_id": str, "created": str},
                pk=("stage", "item_id", "model"), if_not_exists=True,
            )

    def put_failure(self, stage: str, item_id: str, model: str, *, reason: str, error: str, permanent: bool,
                    run_id: str | None) -> None:
        """Record (or replace) why `item_id` failed in `stage` with `model`."""
        row = {"stage": stage, "item_id": item_id, "model": model, "reason": reason, "error": error,
               "permanent": int(permanent), "run_id": run_id, "created": now()}
        with self._writing():
            self.db["failures"].insert(row, replace=True)

    def clear_failure(self, stage: str, item_id: str, model: str) -> None:
        with self._writing():
            self.db["failures"].delete_where("stage = ? and item_id = ? and model = ?", [stage, item_id, model])

    def failures(self, stage: str, item_ids: Iterable[str], model: str | None = None) -> list[dict]:
        """The stored failures of these items in `stage` (with `model` only, if given), oldest first:
        {"item_id", "model", "reason", "error", "permanent": bool, "run_id", "created"}."""
        wanted = set(item_ids)
        where, args = "stage = ?", [stage]
        if model is not None:
            where, args = where + " and model = ?", [*args, model]
        rows = self.db["failures"].rows_where(where, args, order_by="created, item_id")
        return [{**r, "permanent": bool(r["permanent"])} for r in rows if r["item_id"] in wanted]
