"""The served graphs: in process, and through a real `langgraph dev` server driven by `langgraph_sdk`."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agents.seeds import sotopia_seeds
from graphs.served import (
    AdaptRunConfig,
    EpisodeRunConfig,
    JudgeRunConfig,
    ServedConfigError,
    adapt,
    adapt_context,
    episode,
    episode_context,
    judge,
    judge_context,
)
from tests.site_data import make_store

ROOT = Path(__file__).resolve().parent.parent
SERVER_START_S = 90


def test_served_episode_in_process(scenario):
    config = EpisodeRunConfig(scenario=json.loads(scenario.to_json()), model="puppet", max_turns=2)
    state = asyncio.run(episode.ainvoke({}, context=config))
    assert [t["name"] for t in state["turns"]] == ["Li Wei", "Chen Jing", "Li Wei", "Chen Jing"]
    assert [i["turn_index"] for i in state["intents"]] == [0, 1, 2, 3]
    assert state["ended_by"] == "max_turns"


def test_served_episode_continues_a_given_transcript(scenario):
    config = EpisodeRunConfig(scenario=json.loads(scenario.to_json()), model="puppet", max_turns=2)
    first = {"index": 0, "speaker": 0, "name": "Li Wei", "action": "speak", "text": "Morning!", "raw": "",
             "valid": True}
    state = asyncio.run(episode.ainvoke({"turns": [first], "intents": []}, context=config))
    assert [t["index"] for t in state["turns"]] == [0, 1, 2, 3]  # the given turn once, then three new ones
    assert state["turns"][0]["text"] == "Morning!"


def test_served_adapt_in_process():
    seed = sotopia_seeds()[0]
    state = asyncio.run(adapt.ainvoke({}, context=AdaptRunConfig(culture="JPN", seed_id=seed.id)))
    adapted = state["scenario"]
    assert adapted["culture"] == "JPN" and adapted["source"] == f"adapted:{seed.id}"
    assert [a["error"] for a in state["attempts"]] == [None]
    assert {p["name"] for p in adapted["participants"]}.isdisjoint({p.name for p in seed.participants})


def test_served_judge_in_process(tmp_path):
    make_store(tmp_path / "s.db")
    state = asyncio.run(judge.ainvoke({}, context=JudgeRunConfig(db=str(tmp_path / "s.db"), episode_id="ep-jpn-done")))
    assert sorted(j["aspect"] for j in state["judgements"]) == ["culture", "meta", "quality"]
    assert all(j["valid"] for j in state["judgements"])


def test_run_config_errors(tmp_path):
    with pytest.raises(ServedConfigError, match="scenario_id: 'nope' is in neither"):
        episode_context(EpisodeRunConfig(scenario_id="nope"))
    with pytest.raises(ServedConfigError, match="db: no store at"):
        episode_context(EpisodeRunConfig(scenario_id="x", db=str(tmp_path / "missing.db")))
    with pytest.raises(ServedConfigError, match="max_turns: must be at least 1"):
        episode_context(EpisodeRunConfig(max_turns=0))
    with pytest.raises(ServedConfigError, match="seed_id: 'nope' is in neither the SOTOPIA seeds"):
        adapt_context(AdaptRunConfig(seed_id="nope"))
    with pytest.raises(ServedConfigError, match="give db \\+ episode_id, or culture \\+ scenario \\+ turns"):
        judge_context(JudgeRunConfig())
    make_store(tmp_path / "s.db")
    with pytest.raises(ServedConfigError, match="episode_id: 'ep-nope' is not in"):
        judge_context(JudgeRunConfig(db=str(tmp_path / "s.db"), episode_id="ep-nope"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`langgraph dev` on a free loopback port, killed (with its children) when the module ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("langgraph-dev")  # the server keeps .langgraph_api/ in its cwd
    log = workdir / "server.log"
    env = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false"}
    cli = Path(sys.executable).with_name("langgraph")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(cli), "dev", "--config", str(ROOT / "langgraph.json"), "--no-browser", "--no-reload",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(url + "/ok", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"langgraph dev did not come up on {url}:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn has workers), SIGKILL it if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def test_langgraph_dev_runs_an_episode(server):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server)
    assistant = client.assistants.search(graph_id="episode")[0]
    thread = client.threads.create()
    state = client.runs.wait(thread["thread_id"], assistant["assistant_id"], input={},
                             context={"culture": "JPN", "model": "puppet", "max_turns": 2, "seed": 3},
                             raise_error=True)
    seed = sotopia_seeds()[0]
    names = [p.name for p in seed.participants]
    assert [(t["speaker"], t["name"]) for t in state["turns"]] == [(0, names[0]), (1, names[1])] * 2
    assert all(t["valid"] and t["action"] == "speak" for t in state["turns"])
    assert [i["turn_index"] for i in state["intents"]] == [0, 1, 2, 3]
    assert state["ended_by"] == "max_turns"
    # The thread keeps the final state, and Studio's graph view sees the real nodes inside.
    assert client.threads.get_state(thread["thread_id"])["values"]["ended_by"] == "max_turns"
    drawn = client.assistants.get_graph(assistant["assistant_id"], xray=True)
    assert {"episode:inquirer", "episode:responder", "episode:observer"} <= {n["id"] for n in drawn["nodes"]}


def test_langgraph_dev_serves_every_graph(server, tmp_path):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server)
    registered = json.loads((ROOT / "langgraph.json").read_text())["graphs"]
    assert {a["graph_id"] for a in client.assistants.search(limit=100)} == set(registered)
    thread = client.threads.create()
    state = client.runs.wait(thread["thread_id"], "adapt", input={}, context={"culture": "DEU", "model": "puppet"},
                             raise_error=True)
    assert state["scenario"]["culture"] == "DEU" and len(state["attempts"]) == 1
    make_store(tmp_path / "s.db")
    state = client.runs.wait(client.threads.create()["thread_id"], "judge",
                             input={}, context={"db": str(tmp_path / "s.db"), "episode_id": "ep-chn-leave"},
                             raise_error=True)
    assert sorted(j["aspect"] for j in state["judgements"]) == ["culture", "meta", "quality"]


def test_langgraph_dev_reports_a_bad_config(server):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server)
    thread = client.threads.create()
    with pytest.raises(Exception, match="ServedConfigError: scenario_id: 'nope' is in neither"):
        client.runs.wait(thread["thread_id"], "episode", input={}, context={"scenario_id": "nope"},
                         raise_error=True)
