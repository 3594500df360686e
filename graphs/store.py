"""The SQLite store: one file holds runs, scenarios, episodes, turns, intents, judgements and contrastive replies.

    python -m graphs.store backup runs/clca.db backups/clca.db   # a consistent copy, safe while others write

The store is closed: records go in and come out typed (`RunRecord`, `ScenarioRecord`, `EpisodeRecord`,
`agents.records.Turn` and `Intent`, `Judgement`, `ContrastRecord`), every query, counts included, is a `Store`
method, and the schema is fixed (`SCHEMA`, created when missing): a field the schema lacks is an error, never a new
column. Stores written by earlier releases open and resume unchanged; a table they lack (`contrasts`) is created
when they are opened.

Keys name models by identity (`agents.models.model_identity`), never by endpoint: the same model behind another URL
finds its episodes, judgements, replies and failures. A store from a release that keyed them on the whole spec
(`openai:M@URL`) is rewritten to identities once, when it is first opened (`STORE_VERSION`, SQLite's user_version).

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
import sys
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlite_utils
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random

from agents import cli
from agents.model_identity import model_identity
from agents.provenance import git_commit
from agents.records import Aspect, Intent, Scenario, Turn

DEFAULT_DB = "runs/clca.db"

# The store's format (SQLite's user_version): 1 keys models by identity (`model_identity`), 0 by whole spec.
STORE_VERSION = 1
# How long a write waits for another process's write to finish before "database is locked".
BUSY_TIMEOUT_MS = 30_000
# Final statuses are never re-run; 'running' resumes from its checkpoint; 'failed' is retried.
FINAL = ("done", "invalid")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def episode_id(scenario_id: str, culture: str, model: str, seed: int, sample: int) -> str:
    """Deterministic, so rerunning a command finds the episodes it already made; `model` counts by identity
    (`model_identity`), so moving the endpoint does not change it."""
    key = json.dumps([scenario_id, culture, model_identity(model), seed, sample])
    return "ep-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def contrast_id(episode_id: str, turn_index: int, model: str, seed: int, structured: bool,
                prompt_versions: dict) -> str:
    """What determines a contrastive reply, hashed, so rerunning `graphs.contrast` finds the replies it made; `model`
    counts by identity."""
    key = json.dumps([episode_id, turn_index, model_identity(model), seed, structured, prompt_versions],
                     sort_keys=True)
    return "ct-" + hashlib.sha256(key.encode()).hexdigest()[:16]


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


def sqlite_problem(path: str | Path) -> str | None:
    """Why the existing file at `path` is not a SQLite database ("file is not a database"), or None when it is
    one (an empty file is an empty database) or cannot be opened to tell (the store's own open reports that).

    Read through SQLite itself, never with a plain `open()`: closing any descriptor of a file drops every POSIX
    lock this process holds on it, among them the shared lock an open WAL connection keeps on its store for
    life. Without that lock another process's last connection believes it is alone, checkpoints and deletes the
    `-wal` and `-shm` files, and this process's connections, fresh ones included (SQLite maps one `-shm` per
    file and process), read the deleted wal-index: the store as it was. SQLite's own opens share its lock table.
    """
    try:
        conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=rw", uri=True)  # never creates the file
        try:
            conn.execute("PRAGMA schema_version").fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return None
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None


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


# Filesystems where SQLite's locks and WAL's shared memory do not hold across hosts (sqlite.org/wal.html: "WAL
# does not work over a network filesystem"; sqlite.org/lockingv3.html on NFS locking): mountinfo's type field.
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs",
                                 "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone",
                                 "fuse.cephfs", "lustre", "gpfs", "beegfs"})
ENV_ALLOW_NETWORK = "CLCA_ALLOW_NETWORK_STORE"  # "1": the user vouches for their filesystem's locking


def filesystem_type(path: str | Path, mountinfo: str | Path = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem `path` (which must exist) lives on, from the mount table (Linux; None where
    there is none): the entry whose mount point is the longest prefix of the resolved path."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    target, best, kind = os.path.realpath(path), "", None
    for line in lines:
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[fields.index("-") + 1]
    return kind


def network_filesystem(path: str | Path, mountinfo: str | Path = "/proc/self/mountinfo") -> str | None:
    """The network filesystem type `path` is on (NETWORK_FILESYSTEMS), None on a local one or when
    CLCA_ALLOW_NETWORK_STORE=1."""
    if os.environ.get(ENV_ALLOW_NETWORK) == "1":
        return None
    kind = filesystem_type(path, mountinfo)
    return kind if kind in NETWORK_FILESYSTEMS else None


class StoreError(ValueError):
    """A record the fixed schema cannot hold (a field it has no column for), or a stored value that is not
    one of a column's known values; one line naming the table and field."""


# The fixed schema: table -> (column -> type, primary key, indexes). Created when missing, never altered: a
# field outside it is a StoreError. Earlier releases wrote these tables (all but `contrasts`, which is created in
# their stores when they are opened), so their stores open as they are.
SCHEMA: dict[str, tuple[dict[str, type], str | tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    "runs": ({"id": str, "command": str, "config": str, "git": str, "started": str, "finished": str, "summary": str},
             "id", ()),
    "scenarios": ({"id": str, "culture": str, "seed_id": str, "source": str, "data": str, "status": str,
                   "model": str, "prompt_version": str, "attempts": int, "error": str, "raw": str, "run_id": str,
                   "git": str, "created": str}, "id", (("culture", "status"),)),
    "episodes": ({"id": str, "scenario_id": str, "culture": str, "model": str, "seed": int, "sample": int,
                  "status": str, "ended_by": str, "n_turns": int, "max_turns": int, "prompt_versions": str,
                  "config": str, "git": str, "run_id": str, "error": str, "usage": str, "created": str,
                  "finished": str}, "id", (("culture", "status"),)),
    "turns": ({"episode_id": str, "idx": int, "speaker": int, "name": str, "action": str, "text": str, "raw": str,
               "valid": int}, ("episode_id", "idx"), ()),
    "intents": ({"episode_id": str, "turn_index": int, "intent": str, "reason": str, "cultural": int, "raw": str,
                 "valid": int, "prompt_version": str}, ("episode_id", "turn_index"), ()),
    # One row per (episode, judge model, aspect); label/confidence are None and valid=0 when unparseable.
    "judgements": ({"episode_id": str, "judge_model": str, "aspect": str, "label": str, "confidence": str,
                    "score": float, "critique": str, "raw": str, "valid": int, "prompt_version": str, "run_id": str,
                    "created": str}, ("episode_id", "judge_model", "aspect"), ()),
    # One row per ungrounded reply to a kept episode's spoken line (`graphs.contrast`), keyed by `contrast_id`.
    "contrasts": ({"id": str, "episode_id": str, "turn_index": int, "speaker": int, "model": str, "seed": int,
                   "structured": int, "prompt_versions": str, "action": str, "text": str, "raw": str, "valid": int,
                   "outcome": str, "config": str, "usage": str, "run_id": str, "git": str, "created": str}, "id",
                  (("episode_id", "model"),)),
    # One row per (stage, item, model) whose last attempt failed (`Store.put_failure`).
    "failures": ({"stage": str, "item_id": str, "model": str, "reason": str, "error": str, "permanent": int,
                  "run_id": str, "created": str}, ("stage", "item_id", "model"), ()),
}


def _checked(table: str, row: dict) -> dict:
    """`row` if every key is a column of `table`, else StoreError (a typo must not become a column)."""
    columns = SCHEMA[table][0]
    stray = [k for k in row if k not in columns]
    if stray:
        raise StoreError(f"{table}: no field {stray[0]!r} (fields: {', '.join(columns)})")
    return row


def _dumps(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class RunRecord:
    """One command or served run: what started it (`command`, `config`), when, and its summary once finished."""

    id: str
    command: str
    config: dict
    git: str | None
    started: str
    finished: str | None = None
    summary: dict | None = None


@dataclass(frozen=True)
class ScenarioRecord:
    """One scenarios row: a usable scenario (status 'ok', `scenario` set), or an adaptation that never validated
    (status 'failed', `scenario` None, `error` and the last `raw` answer say why), with who made it and how."""

    id: str
    status: str
    scenario: Scenario | None
    culture: str | None = None
    source: str | None = None
    seed_id: str | None = None
    model: str | None = None
    prompt_version: str | None = None  # JSON text of the adaptation's template versions
    attempts: int | None = None
    error: str | None = None
    raw: str | None = None
    run_id: str | None = None
    git: str | None = None
    created: str | None = None


# What a scenario's provenance may say (the scenarios columns other than those the scenario itself fills).
SCENARIO_PROVENANCE = ("culture", "seed_id", "model", "prompt_version", "attempts", "error", "raw", "run_id", "git")


@dataclass(frozen=True)
class EpisodeRecord:
    """One episode: what it plays (scenario, culture, model, seed, sample, max_turns), its provenance
    (`prompt_versions`: template name -> version, `config`: the request and its origin, `git`, `run_id`)
    and, once it ends, its outcome (`status` running, done, invalid or failed; `ended_by`, `n_turns`,
    `error`, `usage`: model usage totals)."""

    id: str
    scenario_id: str
    culture: str
    model: str
    seed: int
    sample: int
    max_turns: int | None = None
    prompt_versions: dict | None = None
    config: dict | None = None
    git: str | None = None
    run_id: str | None = None
    status: str = "running"
    ended_by: str | None = None
    n_turns: int | None = None
    error: str | None = None
    usage: dict | None = None
    created: str | None = None
    finished: str | None = None


# The columns `begin_episode` writes; the outcome columns are `finish_episode`'s.
_EPISODE_START = ("id", "scenario_id", "culture", "model", "seed", "sample", "max_turns", "prompt_versions", "config",
                  "git", "run_id")


@dataclass(frozen=True)
class Judgement:
    """One judge answer about one aspect of an episode: a label and confidence (quality, culture, meta), a
    score (SOTOPIA dimensions) or, when the answer did not parse, neither (`valid` False, `raw` kept).

    `episode_id`, `judge_model` and `created` are the store's to fill (`Store.put_judgements`). `aspect`
    may be given as its text ("goal:0"); anything not an `Aspect` is a ValueError.
    """

    aspect: Aspect
    label: str | None = None
    confidence: str | None = None
    score: float | None = None
    critique: str | None = None
    raw: str = ""
    valid: bool = True
    prompt_version: str | None = None
    run_id: str | None = None
    episode_id: str | None = None
    judge_model: str | None = None
    created: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "aspect", Aspect(self.aspect))
        object.__setattr__(self, "valid", bool(self.valid))


class ContrastOutcome(StrEnum):
    """What an ungrounded reply gives a DPO pair: a pair, or why not (it did not parse, said nothing, or said
    exactly the grounded line)."""

    PAIR = "pair"
    INVALID = "invalid"
    SILENT = "silent"
    IDENTICAL = "identical"


@dataclass(frozen=True)
class ContrastRecord:
    """The ungrounded persona's reply in place of one spoken line of an episode (`graphs.contrast`): who generated it
    and how (`model`, `seed`, `structured`, `prompt_versions`: template name -> version, `config`: the request and its
    origin, `git`, `run_id`), the reply (`action`, `text`, `raw`, `valid`) and what it gives a DPO pair (`outcome`).
    `usage`: the model usage of this one reply. `id` is `contrast_id` of what determines it."""

    id: str
    episode_id: str
    turn_index: int
    speaker: int
    model: str
    seed: int
    structured: bool
    prompt_versions: dict
    text: str
    raw: str
    valid: bool
    outcome: ContrastOutcome
    action: str | None = None
    config: dict | None = None
    usage: dict | None = None
    run_id: str | None = None
    git: str | None = None
    created: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", ContrastOutcome(self.outcome))
        object.__setattr__(self, "valid", bool(self.valid))
        object.__setattr__(self, "structured", bool(self.structured))


@dataclass(frozen=True)
class EpisodeCounts:
    """Episodes by status, and their turns and observer intents, all and valid ones."""

    statuses: dict[str, int] = field(default_factory=dict)
    turns: int = 0
    valid_turns: int = 0
    intents: int = 0
    valid_intents: int = 0


class Store:
    """The store file; several processes may open and write one at once (see `_writing`)."""

    def __init__(self, path: str | Path = DEFAULT_DB):
        self.path = Path(path)
        self.checkpoint_path = self.path.with_name(self.path.name + ".checkpoints")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite_utils.Database(self.path)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        enable_wal(self._db.conn)
        self._db.execute("PRAGMA synchronous = NORMAL")  # safe under WAL against a killed process
        self._create_tables()

    def close(self) -> None:
        """Close the connection. The last connection to a file that closes checkpoints it and removes its
        `-wal` and `-shm` files, so the `.db` alone then holds everything (a copy of it is complete)."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction that takes the write lock when it starts.

        A plain (deferred) transaction that reads before it writes gets "database is locked" at once, without
        waiting, when another process wrote in between; BEGIN IMMEDIATE waits up to the busy timeout instead.
        A write or commit that fails (disk full, read-only file, I/O error) rolls the whole transaction back and
        raises sqlite3's error; SQLite may have rolled back already, so only an open transaction is.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.conn.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def claim(self, key: str):
        """`claim(self.path, key)`."""
        return claim(self.path, key)

    def _create_tables(self) -> None:
        """Create the tables of `SCHEMA` that are missing, in one transaction, so processes that open a new
        store together agree. Existing tables are left as they are."""
        with self._writing():
            for name, (columns, pk, indexes) in SCHEMA.items():
                self._db.table(name).create(columns, pk=pk, if_not_exists=True)
                for index in indexes:
                    self._db.table(name).create_index(list(index), if_not_exists=True)
            renamed = {}
            if self._db.execute("PRAGMA user_version").fetchone()[0] < STORE_VERSION:
                renamed = self._key_by_identity()
                self._db.execute(f"PRAGMA user_version = {STORE_VERSION}")
        if renamed and self.checkpoint_path.exists():  # episodes in flight keep their LangGraph checkpoints
            with closing(sqlite3.connect(self.checkpoint_path, timeout=BUSY_TIMEOUT_MS / 1000)) as conn, conn:
                tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
                for table in tables & {"checkpoints", "writes"}:
                    conn.executemany(f"update {table} set thread_id = ? where thread_id = ?",
                                     [(new, old) for old, new in renamed.items()])

    def _key_by_identity(self) -> dict[str, str]:
        """Rewrite keys that name a model by its whole spec (`openai:M@URL`, before STORE_VERSION 1) to its identity:
        the model columns, and the ids hashed from them (an episode's id through its turns, intents, judgements,
        replies and failures; a reply's id). An episode whose new id is taken (the same model's episode made through
        another endpoint since) keeps its id. Inside `_create_tables`' transaction; returns {old episode id: new}."""
        db = self._db
        for table, column in (("scenarios", "model"), ("episodes", "model"), ("judgements", "judge_model"),
                              ("contrasts", "model"), ("failures", "model")):
            for (spec,) in db.execute(f"select distinct [{column}] from {table} where [{column}] like 'openai:%@%'"
                                      ).fetchall():
                db.execute(f"update or replace {table} set [{column}] = ? where [{column}] = ?",
                           [model_identity(spec), spec])
        taken = {r[0] for r in db.execute("select id from episodes").fetchall()}
        renamed = {}
        for old, scenario, culture, model, seed, sample in db.execute(
                "select id, scenario_id, culture, model, seed, sample from episodes").fetchall():
            new = episode_id(scenario, culture, model, seed, sample)
            if new != old and new not in taken and old.startswith("ep-"):
                renamed[old] = new
                taken.add(new)
        for old, new in renamed.items():
            db.execute("update episodes set id = ? where id = ?", [new, old])
            for table in ("turns", "intents", "judgements", "contrasts"):
                db.execute(f"update {table} set episode_id = ? where episode_id = ?", [new, old])
            db.execute("update or replace failures set item_id = ? where item_id = ? and stage in ('simulate', "
                       "'judge')", [new, old])
        for old, ep, turn, model, seed, structured, versions in db.execute(
                "select id, episode_id, turn_index, model, seed, structured, prompt_versions from contrasts").fetchall():
            new = contrast_id(ep, turn, model, seed, bool(structured), _loads(versions) or {})
            if new != old and db.execute("update or ignore contrasts set id = ? where id = ?", [new, old]).rowcount:
                db.execute("update or replace failures set item_id = ? where item_id = ? and stage = 'contrast'",
                           [new, old])
        return renamed

    def _rows(self, table: str, where: str | None = None, args: Iterable = (), order_by: str | None = None
              ) -> Iterator[dict]:
        """The schema's columns of the rows of `table` that match (a column an earlier release added is not read)."""
        select = ", ".join(f"[{c}]" for c in SCHEMA[table][0])
        return self._db[table].rows_where(where, list(args), order_by=order_by, select=select)

    # ------------------------------------------------------------ runs

    def start_run(self, command: str, config: dict) -> str:
        """Record a run as started; returns its id (12 hex digits)."""
        run_id = uuid.uuid4().hex[:12]
        row = {"id": run_id, "command": command, "config": _dumps(config), "git": git_commit(), "started": now()}
        with self._writing():
            self._db["runs"].insert(_checked("runs", row))
        return run_id

    def finish_run(self, run_id: str, summary: dict) -> None:
        with self._writing():
            self._db["runs"].update(run_id, {"finished": now(), "summary": _dumps(summary)})

    def run(self, run_id: str) -> RunRecord | None:
        rows = list(self._rows("runs", "id = ?", [run_id]))
        return self._run_record(rows[0]) if rows else None

    def runs(self, command_prefix: str | None = None) -> list[RunRecord]:
        """Every run (those whose command starts with `command_prefix`), in the order they were started."""
        where, args = ("command like ? escape '\\'", [_like_prefix(command_prefix)]) if command_prefix else (None, [])
        return [self._run_record(r) for r in self._rows("runs", where, args, order_by="started, rowid")]

    @staticmethod
    def _run_record(r: dict) -> RunRecord:
        return RunRecord(id=r["id"], command=r["command"], config=_loads(r["config"]) or {}, git=r["git"],
                         started=r["started"], finished=r["finished"], summary=_loads(r["summary"]))

    # ------------------------------------------------------------ scenarios

    # A row is a usable scenario (status 'ok', `data` holds the record) or an adaptation that never
    # validated (status 'failed', `data` empty, `error` and the last `raw` answer say why). Rows are
    # replaced whole, so a scenario that succeeds after failing keeps no stale error. The keyword
    # arguments are the provenance columns (SCENARIO_PROVENANCE); any other is a StoreError.

    def put_scenario(self, scenario: Scenario, **provenance) -> None:
        with self._writing():
            self._db["scenarios"].insert(self._scenario_row(scenario, provenance), pk="id", replace=True)

    def put_failed_scenario(self, scenario_id: str, **provenance) -> None:
        row = {"id": scenario_id, "data": None, "status": "failed", "created": now(),
               **self._provenance(provenance)}
        with self._writing():
            self._db["scenarios"].insert(_checked("scenarios", row), pk="id", replace=True)

    def import_scenarios(self, scenarios: Iterable[tuple[Scenario, dict]]) -> None:
        """Store many (scenario, provenance) pairs in one transaction: all of them or, on any error, none."""
        rows = [self._scenario_row(s, meta) for s, meta in scenarios]
        with self._writing():
            self._db["scenarios"].insert_all(rows, pk="id", replace=True)

    def add_scenarios(self, scenarios: Iterable[tuple[Scenario, dict]]) -> None:
        """Store the (scenario, provenance) pairs whose ids are not stored yet, leaving stored ones as they are.

        For rows several runs share (the SOTOPIA seeds): two processes adding the same ones at once store
        each once (insert or ignore), where read-then-write would race."""
        rows = [self._scenario_row(s, meta) for s, meta in scenarios]
        with self._writing():
            self._db["scenarios"].insert_all(rows, pk="id", ignore=True)

    @staticmethod
    def _provenance(provenance: dict) -> dict:
        stray = [k for k in provenance if k not in SCENARIO_PROVENANCE]
        if stray:
            raise StoreError(f"scenarios: no provenance field {stray[0]!r} (fields: {', '.join(SCENARIO_PROVENANCE)})")
        return {**provenance, "model": model_identity(provenance["model"])} if provenance.get("model") else provenance

    @classmethod
    def _scenario_row(cls, scenario: Scenario, provenance: dict) -> dict:
        return {"id": scenario.id, "culture": scenario.culture, "source": scenario.source,
                "data": scenario.to_json(), "status": "ok", "error": None, "raw": None, "created": now(),
                **cls._provenance(provenance)}

    def scenario_record(self, scenario_id: str) -> ScenarioRecord | None:
        rows = list(self._rows("scenarios", "id = ?", [scenario_id]))
        return self._scenario_record(rows[0]) if rows else None

    def scenario_status(self, scenario_id: str) -> str | None:
        record = self.scenario_record(scenario_id)
        return record.status if record else None

    def scenario(self, scenario_id: str) -> Scenario | None:
        record = self.scenario_record(scenario_id)
        return record.scenario if record else None

    def scenario_records(self, culture: str | None = None) -> list[ScenarioRecord]:
        """Every row, failed ones included, for inspection, in id order."""
        where, args = ("culture = ?", [culture]) if culture else (None, [])
        return [self._scenario_record(r) for r in self._rows("scenarios", where, args, order_by="id")]

    def scenarios(self, culture: str | None = None, status: str = "ok") -> list[Scenario]:
        """The usable scenarios (of a culture), in id order."""
        where, args = "status = ? and data is not null", [status]
        if culture:
            where, args = where + " and culture = ?", [*args, culture]
        return [Scenario.from_json(r["data"]) for r in self._rows("scenarios", where, args, order_by="id")]

    @staticmethod
    def _scenario_record(r: dict) -> ScenarioRecord:
        data = r.pop("data")
        return ScenarioRecord(**r, scenario=Scenario.from_json(data) if data else None)

    # ------------------------------------------------------------ episodes

    def episode(self, ep_id: str) -> EpisodeRecord | None:
        rows = list(self._rows("episodes", "id = ?", [ep_id]))
        return self._episode_record(rows[0]) if rows else None

    def episodes(self, culture: str | None = None, status: str | None = None) -> list[EpisodeRecord]:
        """The episodes (of a culture, with a status), in id order."""
        clauses, args = [], []
        if culture:
            clauses.append("culture = ?")
            args.append(culture)
        if status:
            clauses.append("status = ?")
            args.append(status)
        return [self._episode_record(r) for r in self._rows("episodes", " and ".join(clauses) or None, args,
                                                             order_by="id")]

    @staticmethod
    def _episode_record(r: dict) -> EpisodeRecord:
        return EpisodeRecord(**{**r, "prompt_versions": _loads(r["prompt_versions"]), "config": _loads(r["config"]),
                                "usage": _loads(r["usage"])})

    def begin_episode(self, episode: EpisodeRecord) -> None:
        """Record an episode as running (what it plays and its provenance; its outcome fields are left to
        `finish_episode`), keeping its creation time if it was started before."""
        row = {k: getattr(episode, k) for k in _EPISODE_START}
        row.update(model=model_identity(episode.model), prompt_versions=_dumps(episode.prompt_versions),
                   config=_dumps(episode.config))
        with self._writing():
            old = self.episode(episode.id)
            self._db["episodes"].upsert({**row, "status": "running", "created": old.created if old else now()},
                                        pk="id")

    def finish_episode(
        self, ep_id: str, status: str, turns: Iterable[Turn], intents: Iterable[Intent], *, ended_by: str | None,
        intent_version: str | None, usage: dict | None = None, error: str | None = None,
    ) -> None:
        """Write an episode's turns, intents and final status in one transaction."""
        turns, intents = list(turns), list(intents)
        with self._writing():
            self._db["turns"].delete_where("episode_id = ?", [ep_id])
            self._db["intents"].delete_where("episode_id = ?", [ep_id])
            self._db["turns"].insert_all(
                {"episode_id": ep_id, "idx": t.index, "speaker": t.speaker, "name": t.name,
                 "action": t.action.value if t.action else None, "text": t.text, "raw": t.raw, "valid": int(t.valid)}
                for t in turns
            )
            self._db["intents"].insert_all(
                {"episode_id": ep_id, "turn_index": i.turn_index, "intent": i.intent, "reason": i.reason,
                 "cultural": int(i.cultural), "raw": i.raw, "valid": int(i.valid), "prompt_version": intent_version}
                for i in intents
            )
            self._db["episodes"].update(
                ep_id,
                {"status": status, "ended_by": ended_by, "n_turns": len(turns), "error": error,
                 "usage": _dumps(usage or {}), "finished": now()},
            )

    def turns(self, ep_id: str) -> list[Turn]:
        return [
            Turn(index=r["idx"], speaker=r["speaker"], name=r["name"], action=r["action"], text=r["text"],
                 raw=r["raw"] or "", valid=bool(r["valid"]))
            for r in self._rows("turns", "episode_id = ?", [ep_id], order_by="idx")
        ]

    def intents(self, ep_id: str) -> list[Intent]:
        return [
            Intent(turn_index=r["turn_index"], intent=r["intent"], reason=r["reason"] or "",
                   cultural=bool(r["cultural"]), raw=r["raw"] or "", valid=bool(r["valid"]))
            for r in self._rows("intents", "episode_id = ?", [ep_id], order_by="turn_index")
        ]

    def counts(self, ids: Iterable[str] | None = None, culture: str | None = None) -> EpisodeCounts:
        """Episodes by status, and their turns and intents (all and valid), over the episodes with these ids
        (all when None) of a culture (any when None)."""
        clauses, args = [], []
        if ids is not None:
            ids = list(ids)
            clauses.append(f"id in ({','.join('?' * len(ids)) or 'null'})")
            args += ids
        if culture:
            clauses.append("culture = ?")
            args.append(culture)
        chosen = f"select id from episodes where {' and '.join(clauses) or '1'}"

        def q(sql: str) -> list[tuple]:
            # fetchall: a statement stepped only to its first row keeps this connection's read snapshot open
            return self._db.execute(sql, args).fetchall()

        statuses = dict(q(f"select status, count(*) from episodes where id in ({chosen}) group by status "
                          "order by status"))
        [(turns, valid_turns)] = q(f"select count(*), coalesce(sum(valid), 0) from turns where episode_id in "
                                   f"({chosen})")
        [(intents, valid_intents)] = q(f"select count(*), coalesce(sum(valid), 0) from intents where episode_id in "
                                       f"({chosen})")
        return EpisodeCounts(statuses=statuses, turns=turns, valid_turns=valid_turns, intents=intents,
                             valid_intents=valid_intents)

    # ------------------------------------------------------------ judgements

    def put_judgements(self, ep_id: str, judge_model: str, judgements: Iterable[Judgement]) -> None:
        """Replace one judge model's verdicts on an episode in one transaction."""
        created, judge_model = now(), model_identity(judge_model)
        rows = []
        for j in judgements:
            row = asdict(j)
            row.update(aspect=j.aspect.value, valid=int(j.valid), episode_id=ep_id, judge_model=judge_model,
                       created=created)
            rows.append(_checked("judgements", row))
        with self._writing():
            self._db["judgements"].delete_where("episode_id = ? and judge_model = ?", [ep_id, judge_model])
            self._db["judgements"].insert_all(rows)

    def judgements(self, ep_id: str, judge_model: str | None = None) -> list[Judgement]:
        """An episode's judgements (by one judge model), by judge model and aspect."""
        where, args = "episode_id = ?", [ep_id]
        if judge_model:
            where, args = where + " and judge_model = ?", [*args, model_identity(judge_model)]
        return [self._judgement(r) for r in self._rows("judgements", where, args, order_by="judge_model, aspect")]

    @staticmethod
    def _judgement(r: dict) -> Judgement:
        try:
            return Judgement(**r)
        except ValueError:
            raise StoreError(f"judgements: episode {r['episode_id']}, judge {r['judge_model']}: aspect "
                             f"{r['aspect']!r} is not one of {', '.join(a.value for a in Aspect)}") from None

    def judge_models(self, culture: str | None = None) -> list[str]:
        """The judge models that judged episodes (of a culture), sorted."""
        where, args = ("where e.culture = ?", [culture]) if culture else ("", [])
        return [r[0] for r in self._db.execute(
            "select distinct j.judge_model from judgements j join episodes e on e.id = j.episode_id "
            f"{where} order by 1", args).fetchall()]

    # ------------------------------------------------------------ contrastive replies

    def put_contrast(self, contrast: ContrastRecord) -> None:
        """Store (or replace) one contrastive reply; `created` is filled in when empty."""
        row = asdict(contrast)
        row.update(model=model_identity(contrast.model), structured=int(contrast.structured), valid=int(contrast.valid), outcome=contrast.outcome.value,
                   prompt_versions=_dumps(contrast.prompt_versions), config=_dumps(contrast.config),
                   usage=_dumps(contrast.usage), created=contrast.created or now())
        with self._writing():
            self._db["contrasts"].insert(_checked("contrasts", row), pk="id", replace=True)

    def contrast(self, contrast_id: str) -> ContrastRecord | None:
        rows = list(self._rows("contrasts", "id = ?", [contrast_id]))
        return self._contrast(rows[0]) if rows else None

    def contrast_ids(self, ids: Iterable[str]) -> set[str]:
        """The ids among `ids` that have a stored contrastive reply."""
        wanted = set(ids)
        return {r[0] for r in self._db.execute("select id from contrasts").fetchall() if r[0] in wanted}

    def contrast_outcomes(self, ids: Iterable[str]) -> Counter:
        """The stored replies among `ids`, counted by outcome (`ContrastOutcome` value)."""
        wanted = set(ids)
        return Counter(o for i, o in self._db.execute("select id, outcome from contrasts").fetchall() if i in wanted)

    def contrasts(self, episode_ids: Iterable[str], model: str | None = None) -> list[ContrastRecord]:
        """The stored contrastive replies to these episodes' lines (by `model` only, if given), by episode, line
        and time stored."""
        wanted = set(episode_ids)
        where, args = (None, []) if model is None else ("model = ?", [model_identity(model)])
        return [self._contrast(r) for r in self._rows("contrasts", where, args,
                                                      order_by="episode_id, turn_index, created, id")
                if r["episode_id"] in wanted]

    @staticmethod
    def _contrast(r: dict) -> ContrastRecord:
        try:
            return ContrastRecord(**{**r, "prompt_versions": _loads(r["prompt_versions"]) or {},
                                     "config": _loads(r["config"]), "usage": _loads(r["usage"])})
        except ValueError:
            raise StoreError(f"contrasts: {r['id']}: outcome {r['outcome']!r} is not one of "
                             f"{', '.join(o.value for o in ContrastOutcome)}") from None

    # ------------------------------------------------------------ failures

    # One row per (stage, item, model) whose last attempt failed: `reason` groups failures for the summaries,
    # `error` is the example's own line, and a `permanent` failure (the endpoint will refuse it however often it
    # is sent) is left out of reruns until asked for (--retry-failed). Cleared when the item succeeds.

    def put_failure(self, stage: str, item_id: str, model: str, *, reason: str, error: str, permanent: bool,
                    run_id: str | None) -> None:
        """Record (or replace) why `item_id` failed in `stage` with `model`."""
        row = {"stage": stage, "item_id": item_id, "model": model_identity(model), "reason": reason, "error": error,
               "permanent": int(permanent), "run_id": run_id, "created": now()}
        with self._writing():
            self._db["failures"].insert(_checked("failures", row), replace=True)

    def clear_failure(self, stage: str, item_id: str, model: str) -> None:
        with self._writing():
            self._db["failures"].delete_where("stage = ? and item_id = ? and model = ?",
                                              [stage, item_id, model_identity(model)])

    def failures(self, stage: str, item_ids: Iterable[str], model: str | None = None) -> list[dict]:
        """The stored failures of these items in `stage` (with `model` only, if given), oldest first:
        {"stage", "item_id", "model", "reason", "error", "permanent": bool, "run_id", "created"}."""
        wanted = set(item_ids)
        where, args = "stage = ?", [stage]
        if model is not None:
            where, args = where + " and model = ?", [*args, model_identity(model)]
        rows = self._rows("failures", where, args, order_by="created, item_id")
        return [{**r, "permanent": bool(r["permanent"])} for r in rows if r["item_id"] in wanted]


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# ------------------------------------------------------------------ copies


class BackupError(ValueError):
    """A backup that cannot be made (no store at the source, a destination that exists); one line."""


def backup(src: str | Path, dst: str | Path) -> list[Path]:
    """Copy the store at `src`, and its checkpoint file when there is one, to `dst` (and `<dst>.checkpoints`)
    with SQLite's online backup API (`sqlite3.Connection.backup`, https://sqlite.org/backup.html).

    The copy is the store as one transaction saw it, everything committed before it began (what is still only
    in `-wal` included), and is safe while other processes write: under WAL a reader does not block them, and
    the pages are copied in one step, so a write during the copy does not restart it. Each copy is written to
    `<name>.partial` and renamed when complete, and is closed as a single file (no `-wal` beside it). Returns
    the files written. BackupError (one line) when `src` is not a store or a destination exists already; a
    plain file copy of a store that is open elsewhere may miss what its `-wal` holds.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise BackupError(f"{src}: no such store")
    if problem := sqlite_problem(src):
        raise BackupError(f"{src}: not a SQLite store ({problem})")
    pairs = [(src, dst)]
    checkpoints = src.with_name(src.name + ".checkpoints")
    if checkpoints.is_file():
        pairs.append((checkpoints, dst.with_name(dst.name + ".checkpoints")))
    for _, to in pairs:
        if to.exists():
            raise BackupError(f"{to}: exists already; remove it or choose another destination")
    dst.parent.mkdir(parents=True, exist_ok=True)
    for frm, to in pairs:
        _backup_file(frm, to)
    return [to for _, to in pairs]


def _backup_file(src: Path, dst: Path) -> None:
    partial = dst.with_name(dst.name + ".partial")
    partial.unlink(missing_ok=True)  # left by a backup that was killed
    source = sqlite3.connect(f"{src.absolute().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        target = sqlite3.connect(partial)
        try:
            source.backup(target)  # pages=-1: every page in one step, from one read snapshot
            target.execute("PRAGMA journal_mode = delete")  # one self-contained file; a store opens it in WAL again
        finally:
            target.close()
    finally:
        source.close()
    partial.replace(dst)


def main(argv: list[str] | None = None) -> None:
    """`python -m graphs.store backup SRC DST`."""
    p = cli.ArgumentParser(prog="python -m graphs.store", description="Work on a store file.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup", help="copy a store consistently with SQLite's online backup, safe while other "
                                      "processes write it (a plain file copy may miss what its -wal holds)")
    b.add_argument("src", help="the store to copy, e.g. runs/clca.db (its .checkpoints file is copied too)")
    b.add_argument("dst", help="the copy to write; must not exist")
    args = p.parse_args(argv)
    try:
        written = backup(args.src, args.dst)
    except BackupError as exc:
        sys.exit(f"error: {exc}")
    except sqlite3.Error as exc:
        sys.exit(f"error: backup of {args.src} to {args.dst}: {exc}")
    print(f"backed up {args.src} to {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
