"""The served graphs: in process, and through a real `langgraph dev` server driven by `langgraph_sdk`."""

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.models import Completion, Model
from agents.seeds import sotopia_seeds
from graphs import served as served_module
from graphs import simulate as simulate_module
from graphs.batch import run
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
from graphs.serving import SERVE_ROOT_ENV, ServedInputError, under_root
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


def test_served_judge_in_process(tmp_path, monkeypatch):
    monkeypatch.setenv(SERVE_ROOT_ENV, str(tmp_path))
    make_store(tmp_path / "s.db")
    state = asyncio.run(judge.ainvoke({}, context=JudgeRunConfig(db=str(tmp_path / "s.db"), episode_id="ep-jpn-done")))
    assert sorted(j["aspect"] for j in state["judgements"]) == ["culture", "meta", "quality"]
    assert all(j["valid"] for j in state["judgements"])


def test_run_config_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(SERVE_ROOT_ENV, str(tmp_path))
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


def test_paths_resolve_under_the_serving_root(tmp_path, monkeypatch):
    monkeypatch.setenv(SERVE_ROOT_ENV, str(tmp_path / "root"))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    assert under_root("runs/a.db", "db") == tmp_path / "root" / "runs" / "a.db"
    assert under_root(str(tmp_path / "root" / "b.db"), "db") == tmp_path / "root" / "b.db"
    assert under_root(None, "prompts") is None
    for outside in ("../a.db", str(tmp_path / "a.db"), "/etc/passwd", "out/a.db", "runs/../../a.db"):
        with pytest.raises(ServedInputError, match=f"^db: {outside} is outside the serving root {tmp_path}/root "):
            under_root(outside, "db")
    monkeypatch.delenv(SERVE_ROOT_ENV)
    monkeypatch.chdir(tmp_path)  # default: the server's working directory
    assert under_root("x.db", "db") == tmp_path / "x.db"


def test_the_command_line_and_the_server_run_one_batch_graph():
    drawn = served_module.simulate.get_graph().draw_mermaid()
    assert drawn == simulate_module.GRAPH.get_graph().draw_mermaid()
    assert "plan -.-> episode" in drawn and "episode --> summarize" in drawn


TURN = '{"action": "speak", "text": "hi"}'
INTENT = '{"intent": "Greeting.", "reason": "Polite.", "cultural": false}'


class CountingBackend:
    """Answers after a short wait and records how many episodes had a request in flight at once."""

    name, transient_errors = "counting", ()

    def __init__(self):
        self.active: dict[str, int] = {}
        self.most = 0

    async def agenerate(self, messages, params, task):
        episode = params.cache_key.split(":")[0]  # the episode's seed: one per episode
        self.active[episode] = self.active.get(episode, 0) + 1
        self.most = max(self.most, len(self.active))
        await asyncio.sleep(0.005)
        self.active[episode] -= 1
        if not self.active[episode]:
            del self.active[episode]
        return Completion(TURN if task == "roleplay" else INTENT, 10, 3)


def test_batch_graph_keeps_concurrency_episodes_in_flight_and_counts_their_tokens(tmp_path, culture):
    from graphs.store import Store

    store = Store(tmp_path / "s.db")
    backend = CountingBackend()
    model = Model(backend, "counting")
    request = simulate_module.SimulateRequest(culture=culture.code, episodes=7, model="counting", db=str(store.path),
                                              max_turns=2, concurrency=3, use_seeds=True)
    counts = run(simulate_module.STAGE, request, model=model)["summary"]["this_run"]
    assert counts == {"skipped": 0, "done": 7, "invalid": 0, "failed": 0, "elsewhere": 0}
    assert backend.most == 3
    # 4 turns and 4 labels an episode, 10 prompt + 3 reply tokens a call, stored with each episode
    assert {r.usage["completion_tokens"] for r in store.episodes()} == {24}
    assert model.usage.totals()["calls"] == 7 * 8


@dataclass(frozen=True)
class Server:
    url: str
    root: Path  # the serving root (and the server's working directory)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`langgraph dev` on a free loopback port, killed (with its children) when the module ends. It imports
    this checkout's packages (PYTHONPATH: an editable install may point at another checkout) and serves
    paths under its working directory."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("langgraph-dev")  # the server keeps .langgraph_api/ in its cwd
    log = workdir / "server.log"
    env = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false", "PYTHONPATH": str(ROOT),
           SERVE_ROOT_ENV: str(workdir), "HF_HUB_OFFLINE": "1"}
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
        yield Server(url, workdir)
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

    client = get_sync_client(url=server.url)
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


def test_langgraph_dev_serves_every_graph(server):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server.url)
    registered = json.loads((ROOT / "langgraph.json").read_text())["graphs"]
    assert {a["graph_id"] for a in client.assistants.search(limit=100)} == set(registered)
    thread = client.threads.create()
    state = client.runs.wait(thread["thread_id"], "adapt", input={}, context={"culture": "DEU", "model": "puppet"},
                             raise_error=True)
    assert state["scenario"]["culture"] == "DEU" and len(state["attempts"]) == 1
    make_store(server.root / "s.db")
    state = client.runs.wait(client.threads.create()["thread_id"], "judge",
                             input={}, context={"db": "s.db", "episode_id": "ep-chn-leave"},
                             raise_error=True)
    assert sorted(j["aspect"] for j in state["judgements"]) == ["culture", "meta", "quality"]


def test_langgraph_dev_reports_a_bad_config(server):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server.url)
    thread = client.threads.create()
    with pytest.raises(Exception, match="ServedConfigError: scenario_id: 'nope' is in neither"):
        client.runs.wait(thread["thread_id"], "episode", input={}, context={"scenario_id": "nope"},
                         raise_error=True)


BATCH = {"culture": "JPN", "episodes": 6, "use_seeds": True, "concurrency": 3, "max_turns": 3}


def test_langgraph_dev_batch_streams_progress_and_stores_each_episode(server):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server.url)
    thread = client.threads.create()
    batch = {**BATCH, "model": "puppet:0.02", "db": "runs/batch.db"}
    run = client.runs.create(thread["thread_id"], "simulate", input=batch, stream_mode="custom")
    events, running_at_first = [], None
    for part in client.runs.join_stream(thread["thread_id"], run["run_id"]):
        if part.event != "custom":
            continue
        events.append(part.data)
        if part.data["event"] == "episode" and running_at_first is None:
            running_at_first = client.runs.get(thread["thread_id"], run["run_id"])["status"]
    assert running_at_first == "running"  # progress arrives while the run goes on
    assert [e["event"] for e in events] == ["planned"] + ["episode"] * 6 + ["summary"]
    episodes = events[1:-1]
    assert [e["finished"] for e in episodes] == [1, 2, 3, 4, 5, 6]
    assert episodes[-1]["statuses"] == {"done": 6} and episodes[-1]["total_turns"] == 36
    assert episodes[-1]["total_tokens"] == sum(e["tokens"] for e in episodes) > 0
    state = client.threads.get_state(thread["thread_id"])["values"]
    assert state["summary"]["this_run"] == {"skipped": 0, "done": 6, "invalid": 0, "failed": 0, "elsewhere": 0}

    db = sqlite3.connect(server.root / "runs" / "batch.db")
    rows = db.execute("select status, n_turns, run_id, config from episodes").fetchall()
    assert [(status, turns) for status, turns, _, _ in rows] == [("done", 6)] * 6
    assert {run_id for _, _, run_id, _ in rows} == {state["run_id"]}
    provenance = json.loads(rows[0][3])["served"]
    assert provenance["graph_id"] == "simulate" and provenance["run_id"] == run["run_id"]
    assert provenance["thread_id"] == thread["thread_id"]
    command, summary = db.execute("select command, summary from runs where id = ?", [state["run_id"]]).fetchone()
    assert command.startswith("served simulate") and json.loads(summary)["turns"] == 36
    # Studio draws the episode graph inside the batch graph's episode node (which fans the episodes out with Send,
    # at most `concurrency` at a time, in a run of its own: episode -> Send(episode) x N -> the episode graph).
    drawn = client.assistants.get_graph(client.assistants.search(graph_id="simulate")[0]["assistant_id"], xray=True)
    assert {"plan", "episode:episode:inquirer", "episode:episode:observer", "summarize"} <= {n["id"] for n in
                                                                                          drawn["nodes"]}

    # The viewer shows them, and its index filters by that run.
    from graphs import view

    view.build_site(server.root / "runs" / "batch.db", server.root / "site")
    index = (server.root / "site" / "index.html").read_text()
    assert index.count(f'data-run="{state["run_id"]}"') == 6
    assert f'<option value="{state["run_id"]}">{state["run_id"]}: served simulate, run {run["run_id"]}</option>' in index


def test_langgraph_dev_cancelled_batch_resumes_and_a_rerun_adds_nothing(server):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server.url)
    batch = {**BATCH, "model": "puppet:0.1", "db": "runs/cancel.db", "concurrency": 2, "seed": 7}
    thread = client.threads.create()
    run = client.runs.create(thread["thread_id"], "simulate", input=batch, stream_mode="custom")
    for part in client.runs.join_stream(thread["thread_id"], run["run_id"]):
        if part.event == "custom" and part.data["event"] == "episode":
            db = sqlite3.connect(server.root / "runs" / "cancel.db")
            deadline = time.monotonic() + 5  # cancel once a third episode is under way (about a second each)
            while db.execute("select count(*) from episodes").fetchone()[0] < 3:
                assert time.monotonic() < deadline, "no episode began after the first ended"
                time.sleep(0.02)
            client.runs.cancel(thread["thread_id"], run["run_id"], wait=True)
            break
    assert client.runs.get(thread["thread_id"], run["run_id"])["status"] == "interrupted"
    checkpoints = sqlite3.connect(server.root / "runs" / "cancel.db.checkpoints")
    deadline, before = time.monotonic() + 5, None
    while True:  # an episode that had ended when the cancel came is still stored, in the background
        statuses = dict(db.execute("select status, count(*) from episodes group by status").fetchall())
        running = {i for (i,) in db.execute("select id from episodes where status = 'running'")}
        in_flight = {t for (t,) in checkpoints.execute("select distinct thread_id from checkpoints")}
        now = (statuses, running, in_flight)
        if (in_flight <= running and now == before) or time.monotonic() > deadline:
            break  # settled: the same for 0.3 s
        before = now
        time.sleep(0.3)
    assert in_flight <= running  # unfinished episodes keep their checkpoints, to resume from
    assert 1 <= statuses["done"] < 6 and statuses.get("running", 0) >= 1  # finished ones are stored
    assert db.execute("select count(*) from turns").fetchone()[0] == 6 * statuses["done"]

    rerun = client.runs.wait(client.threads.create()["thread_id"], "simulate", input=batch, raise_error=True)
    assert rerun["summary"]["this_run"] == {"skipped": statuses["done"], "done": 6 - statuses["done"], "invalid": 0,
                                            "failed": 0, "elsewhere": 0}
    assert db.execute("select count(*) from turns").fetchone()[0] == 36
    assert checkpoints.execute("select count(*) from checkpoints").fetchone()[0] == 0  # resumed and finished

    again = client.runs.wait(client.threads.create()["thread_id"], "simulate", input=batch, raise_error=True)
    assert again["summary"]["this_run"] == {"skipped": 6, "done": 0, "invalid": 0, "failed": 0, "elsewhere": 0}
    assert again["results"] == [] and db.execute("select count(*) from turns").fetchone()[0] == 36


@pytest.mark.parametrize("change, message", [
    ({"culture": "XYZ"}, "unknown culture 'XYZ' (available: AUS, "),
    ({"model": "openai:gpt"}, "model spec 'openai:gpt': expected openai:<model>@<http base url>"),
    ({"scenario_ids": ["nope"]}, "scenario_ids: 'nope' is not in the SOTOPIA seeds"),
    ({"db": "/etc/clca.db"}, "db: /etc/clca.db is outside the serving root "),
    ({"prompts": "../elsewhere"}, "prompts: ../elsewhere is outside the serving root "),
    ({"episodes": 0}, "episodes, samples, max_turns and concurrency must be at least 1"),
    ({"use_seeds": False}, "no adapted scenarios for JPN in runs/bad.db"),
    ({"episodes": "many"}, "field episodes: Input should be a valid integer"),
])
def test_langgraph_dev_bad_batch_input_ends_the_run_with_one_line(server, change, message):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server.url)
    state = client.runs.wait(client.threads.create()["thread_id"], "simulate",
                             input={**BATCH, "model": "puppet", "db": "runs/bad.db", **change}, raise_error=True)
    assert state["error"].startswith(message) and "\n" not in state["error"]
    assert "summary" not in state and not (server.root / "runs" / "bad.db").exists()


def test_langgraph_dev_adapt_then_simulate_then_judge_batches(server):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server.url)

    def run(graph: str, **values) -> dict:
        return client.runs.wait(client.threads.create()["thread_id"], graph,
                                input={"culture": "DEU", "model": "puppet", "db": "runs/stages.db", **values},
                                raise_error=True)

    adapted = run("adapt_batch", n=3, concurrency=2)
    assert adapted["summary"]["adapted"] == 3 and adapted["summary"]["failed"] == 0
    simulated = run("simulate", episodes=3, max_turns=2)
    assert simulated["summary"]["statuses"] == {"done": 3}
    judged = run("judge_batch")
    assert judged["summary"]["this_run"] == {"skipped": 0, "judged": 3, "failed": 0}
    assert run("judge_batch")["summary"]["this_run"] == {"skipped": 3, "judged": 0, "failed": 0}
    contrasted = run("contrast_batch", filter="none")
    lines = contrasted["summary"]["lines"]
    assert lines > 0 and contrasted["summary"]["this_run"] == {"skipped": 0, "asked": lines, "failed": 0}
    assert run("contrast_batch", filter="none")["summary"]["this_run"] == {"skipped": lines, "asked": 0, "failed": 0}
    db = sqlite3.connect(server.root / "runs" / "stages.db")
    assert db.execute("select count(*) from scenarios where status = 'ok' and culture = 'DEU'").fetchone()[0] == 3
    assert db.execute("select count(distinct episode_id) from judgements").fetchone()[0] == 3
    assert db.execute("select count(*) from contrasts").fetchone()[0] == lines
    commands = [c for (c,) in db.execute("select command from runs order by started")]
    assert [c.split(":")[0] for c in commands] == ["served adapt", "served simulate", "served judge", "served judge",
                                                     "served contrast", "served contrast"]


def test_readme_serving_script_runs(server):
    """The README's sdk script, as written, against this server (run from the serving root)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Serving"):]
    script = section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]
    assert "client.runs.create(" in script and "client.runs.cancel(" in script and 'stream_mode="custom"' in script
    done = subprocess.run([sys.executable, "-c", script], cwd=server.root, capture_output=True, text=True, timeout=120,
                          check=False,
                          env={**os.environ, "CLCA_SERVER": server.url})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("1/6 ep-") and "done: 6 turns" in lines[0]
    assert "'failed': 0" in lines[-3] and lines[-2] == "[('done', 6)]"


def test_served_runs_share_one_model_per_spec(monkeypatch, tmp_path):
    monkeypatch.setenv(SERVE_ROOT_ENV, str(tmp_path))
    request = simulate_module.SimulateRequest(culture="JPN", model="puppet:0.001", use_seeds=True, db="a.db")
    first = simulate_module.resolve(request, served=True, origin={})
    second = simulate_module.resolve(simulate_module.SimulateRequest(culture="DEU", model="puppet:0.001",
                                                                     use_seeds=True, db="b.db"), served=True)
    assert first.model is second.model and first.culture.code == "JPN" and second.db == tmp_path / "b.db"
    assert served_module._model("puppet:0.001") is first.model  # the single-item graphs share it too


@pytest.mark.parametrize("graph, values, message", [
    ("adapt_batch", {"culture": "DEU", "nn": 2}, "'nn': unknown input key (did you mean 'n'?)"),
    ("simulate", {"culture": "JPN", "episdoes": 2}, "'episdoes': unknown input key (did you mean 'episodes'?)"),
    ("simulate", {"culture": "JPN", "use_seeds": True, "seeds": "s.jsonl"}, "'seeds': unknown input key"),
    ("judge_batch", {"culture": "JPN", "x" * 300: 1}, "'" + "x" * 36 + "...: unknown input key (known: "),
    ("simulate", {"culture": "JPN", "db": "~/x.db"}, "db: '~/x.db' starts with ~, which is not expanded here"),
    ("simulate", {"culture": "JPN", "scenario_ids": ["nope"]},
     "scenario_ids: 'nope' is not there: no adapted scenarios for JPN in runs/x.db"),
    ("simulate", {"culture": "JPN", "use_seeds": True, "db": ""}, "db: "),  # the serving root itself
])
def test_served_batch_refuses_unknown_keys_and_home_paths(tmp_path, monkeypatch, graph, values, message):
    monkeypatch.setenv(SERVE_ROOT_ENV, str(tmp_path))
    state = asyncio.run(getattr(served_module, graph).ainvoke({"model": "puppet", "db": "runs/x.db", **values}))
    assert state["error"].startswith(message) and "\n" not in state["error"]
    assert "summary" not in state and list(tmp_path.iterdir()) == []


def test_served_single_item_graphs_refuse_unknown_keys():
    with pytest.raises(ServedConfigError, match=r"^'max_turn': unknown context key \(did you mean 'max_turns'\?\)"):
        asyncio.run(episode.ainvoke({}, context={"model": "puppet", "max_turn": 2}))
    with pytest.raises(ServedConfigError, match=r"^'turn': unknown input key \(did you mean 'turns'\?\)"):
        asyncio.run(episode.ainvoke({"turn": []}, context={"model": "puppet"}))


def test_single_item_configs_are_declared_by_the_stage_requests_and_keep_their_old_names():
    from dataclasses import fields as dataclass_fields

    from graphs.adapt import AdaptRequest
    from graphs.simulate import SimulateRequest

    shared = {f.name: f.metadata["help"] for f in dataclass_fields(EpisodeRunConfig) if f.name in
              {g.name for g in dataclass_fields(SimulateRequest)}}
    assert shared == {f.name: f.metadata["help"] for f in dataclass_fields(SimulateRequest) if f.name in shared}
    assert {"culture", "model", "max_turns", "seed", "prompts", "cultures_dir"} <= set(shared)
    assert "seed" in {f.name for f in dataclass_fields(AdaptRequest)} and AdaptRunConfig().seed == 0
    assert adapt_context(AdaptRunConfig(sample_seed=5)).sample_seed == 5  # the old name still works
    assert adapt_context(AdaptRunConfig(seed=4)).sample_seed == 4
    with pytest.raises(Exception, match="prompts"):
        adapt_context(AdaptRunConfig(prompts_dir="/nowhere/outside/the/root"))
