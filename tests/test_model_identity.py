"""Stored keys name the model, not its endpoint: the same model behind another URL resumes instead of replaying,
and a store keyed on the URL by the earlier release (tests/fixtures/store_endpoint) resumes unchanged."""

import shutil
import sqlite3
from pathlib import Path

import pytest

from agents.models import model_identity
from graphs.store import STORE_VERSION, Store, episode_id
from tests.chat_server import ChatServer

FIXTURE = Path(__file__).parent / "fixtures" / "store_endpoint"
FIXTURE_SPEC = "openai:m@http://127.0.0.1:45679/v1"
IN_FLIGHT = "ep-1b95df06c64f1b37"  # the fixture's killed episode, keyed on FIXTURE_SPEC


@pytest.mark.parametrize(("spec", "identity"), [
    ("openai:m@http://a:8000/v1", "openai:m"),
    ("openai:org/Model-7B@http://a:8000/v1,http://b:8000/v1", "openai:org/Model-7B"),
    ("openai:m@x@http://a/v1", "openai:m@x"),  # the URL follows the last '@', as load_model reads it
    ("smollm2", "smollm2"), ("gguf:/models/a.gguf", "gguf:/models/a.gguf"), ("puppet:0.1", "puppet:0.1"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
])
def test_a_spec_names_its_model_without_the_endpoint(spec, identity):
    assert model_identity(spec) == identity


@pytest.fixture
def servers():
    a, b = ChatServer(), ChatServer()
    yield a, b
    a.close()
    b.close()


def run(module: str, server: ChatServer, db: Path, *args: str) -> None:
    import importlib

    importlib.import_module(f"graphs.{module}").main(
        ["--culture", "JPN", "--model", server.spec, "--db", str(db), "--no-progress", *args])


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"select count(*) from {t}").fetchone()[0]
                for t in ("scenarios", "episodes", "turns", "intents", "judgements", "contrasts")}


def test_moving_the_endpoint_resumes_every_stage_instead_of_replaying(tmp_path, servers, capsys):
    a, b = servers
    db = tmp_path / "clca.db"
    stages = [("adapt", "--n", "2"), ("simulate", "--episodes", "2", "--max-turns", "2"), ("judge",),
              ("contrast", "--filter", "none")]
    for module, *args in stages:
        run(module, a, db, *args)
    before, asked = counts(db), a.chats
    assert before["episodes"] == 2 and before["contrasts"] > 0 and asked > 0
    for module, *args in stages:
        run(module, b, db, *args)
    assert b.chats == 0 and counts(db) == before  # nothing asked again, nothing added
    assert "0 judged now, 2 already judged by openai:m" in capsys.readouterr().out
    with Store(db) as store:
        assert {e.model for e in store.episodes("JPN")} == {"openai:m"}
        assert store.judge_models("JPN") == ["openai:m"]


def test_a_store_keyed_on_the_url_by_the_earlier_release_resumes_through_another(tmp_path, servers):
    _, b = servers
    for name in ("clca.db", "clca.db.checkpoints"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    db = tmp_path / "clca.db"
    before = counts(db)
    run("adapt", b, db, "--n", "2")
    run("simulate", b, db, "--episodes", "2", "--max-turns", "2")
    run("judge", b, db)
    run("contrast", b, db, "--filter", "none")
    assert b.chats == 0 and counts(db) == before

    with Store(db) as store, sqlite3.connect(db) as conn:
        assert conn.execute("pragma user_version").fetchone()[0] == STORE_VERSION
        episodes = store.episodes("JPN")
        assert {e.model for e in episodes} == {"openai:m"}
        for e in episodes:  # every id is now the one today's code computes, and its rows followed it
            assert e.id == episode_id(e.scenario_id, "JPN", "openai:m", e.seed, e.sample)
            assert len(store.turns(e.id)) == e.n_turns or e.status == "running"
        done = [e for e in episodes if e.status == "done"]
        assert len(done) == 2 and all(len(store.judgements(e.id, FIXTURE_SPEC)) > 0 for e in done)
        assert len(store.contrasts([e.id for e in done], "openai:m")) == before["contrasts"]
        assert not store.failures("simulate", [IN_FLIGHT])  # the killed episode's key moved with it
        [running] = [e for e in episodes if e.status == "running"]

    # The episode killed in flight resumes from its checkpoint (renamed with it): fewer requests than a fresh one.
    run("simulate", b, db, "--episodes", "1", "--max-turns", "3", "--seed", "1")
    resumed = b.chats
    with Store(db) as store:
        assert store.episode(running.id).status == "done" and len(store.episodes("JPN")) == 3
    fresh = tmp_path / "fresh.db"
    shutil.copy(FIXTURE / "clca.db", fresh)  # same scenarios, no checkpoints: the episode starts over
    run("simulate", b, fresh, "--episodes", "1", "--max-turns", "3", "--seed", "1")
    assert 0 < resumed < b.chats - resumed


def test_a_study_node_is_the_same_behind_another_endpoint():
    from study.pipeline import Node

    def node(url: str) -> Node:
        return Node("simulate", "CHN", {"model": f"openai:m@{url}", "episodes": 16})

    assert node("http://a:8000/v1").id == node("http://b:9000/v1").id
    assert Node("simulate", "CHN", {"model": "openai:other@http://a:8000/v1", "episodes": 16}).id != \
        node("http://a:8000/v1").id
