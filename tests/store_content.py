"""What a run leaves in a store, for tests that compare two stores (kills, concurrent writers)."""

from __future__ import annotations

import sqlite3

QUERIES = {  # run ids and times are left out: they differ between runs by design
    "scenarios": "select id, culture, status, data, attempts, error from scenarios",
    "episodes": "select id, scenario_id, status, ended_by, n_turns, error from episodes",
    "turns": "select episode_id, idx, speaker, action, text, valid from turns",
    "intents": "select episode_id, turn_index, intent, cultural, valid from intents",
    "judgements": "select episode_id, judge_model, aspect, label, confidence, score, valid from judgements",
}


def content(db) -> dict[str, list[tuple]]:
    """Table -> its rows (sorted), for every table a command writes."""
    conn = sqlite3.connect(db)
    try:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        return {name: sorted(conn.execute(sql).fetchall()) if name in tables else [] for name, sql in QUERIES.items()}
    finally:
        conn.close()
