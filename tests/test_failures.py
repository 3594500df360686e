"""Say what failed: every stage's summary lists its stored failures by reason (a count and an example id each); a
permanent failure (a prompt past the model's context, an HTTP 4xx other than 408/409/429, `PermanentModelError`) is
stored as such and not sent again by a rerun unless `--retry-failed`; a prompt past a known context is found at plan
time, without a request. A local server on 127.0.0.1 refuses the requests of one scenario with llama-server's 400."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from agents.models import Model
from agents.models.base import PermanentModelError
from agents.models.openai_compat import OpenAIBackend
from agents.seeds import sotopia_seeds
from graphs import adapt, judge, simulate
from graphs.batch import CONTEXT_EXCEEDED, failure_lines, failure_of, failure_report, run
from graphs.simulate import plan_episodes
from graphs.store import Store
from tests.chat_server import ChatServer


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def simulate_cli(server: ChatServer, db, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "graphs.simulate", "--culture", "CHN", "--model", server.spec, "--db", str(db),
           "--use-seeds", "--episodes", "3", "--max-turns", "1", "--concurrency", "1", "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def model_on(server: ChatServer, context_tokens: int | None = None) -> Model:
    backend = OpenAIBackend("m", server.url, max_in_flight=1)
    backend.context_tokens = context_tokens
    return Model(backend, server.spec, backoff_s=0.01)


def test_a_context_refusal_is_one_reason_line_stored_permanent_and_resent_only_with_retry_failed(server, tmp_path):
    db = tmp_path / "s.db"
    refused = plan_episodes(list(sotopia_seeds()), "CHN", server.spec, 0, 3, 1)[1]
    server.marker = refused.scenario.participants[0].name

    first = simulate_cli(server, db)
    assert first.returncode == 1, first.stderr[-2000:]
    assert server.refused == 1  # a 400 is not retried within the run
    lines = [line.strip() for line in first.stdout.splitlines() if line.strip().startswith("failed ")]
    assert lines == [f"failed 1 x {CONTEXT_EXCEEDED} (permanent, not retried without --retry-failed); e.g. "
                     f"{refused.id}: BadRequestError: Error code: 400 - {lines[0].split(' - ', 1)[1]}"]
    assert "exceeds the available context size" in lines[0]
    store = Store(db)
    assert store.episode(refused.id).status == "failed"
    [stored] = store.failures("simulate", [refused.id])
    assert stored["permanent"] and stored["reason"] == CONTEXT_EXCEEDED
    summary = store.runs()[-1].summary
    assert summary["failures"] == [{"reason": CONTEXT_EXCEEDED, "count": 1, "permanent": True, "example": refused.id,
                                    "error": stored["error"]}]

    chats = server.chats
    rerun = simulate_cli(server, db)
    assert rerun.returncode == 1 and server.refused == 1 and server.chats == chats  # nothing sent again
    assert "2 already stored, 1 failed permanently before and not retried" in rerun.stdout
    assert f"failed 1 x {CONTEXT_EXCEEDED}" in rerun.stdout

    again = simulate_cli(server, db, "--retry-failed")
    assert again.returncode == 1 and server.refused == 2  # sent again, refused again

    server.marker = None  # the server's context grew: the retried episode finishes, its failure is cleared
    done = simulate_cli(server, db, "--retry-failed")
    assert done.returncode == 0 and "failed 1 x" not in done.stdout
    assert Store(db).failures("simulate", [refused.id]) == [] and Store(db).episode(refused.id).status == "done"


def test_transient_failures_are_grouped_by_reason_and_retried_by_a_plain_rerun(tmp_path):
    server = ChatServer(refusal=(503, {"error": {"message": "overloaded"}}))
    try:
        db = tmp_path / "s.db"
        refused = plan_episodes(list(sotopia_seeds()), "CHN", server.spec, 0, 3, 1)[0]
        server.marker = refused.scenario.participants[0].name
        first = simulate_cli(server, db)
        assert first.returncode == 1 and server.refused == 4  # retried within the run: 4 attempts
        assert f"failed 1 x HTTP 503 (InternalServerError) (retried by a rerun); e.g. {refused.id}" in first.stdout
        simulate_cli(server, db)
        assert server.refused == 8  # a plain rerun sends it again
    finally:
        server.close()


def test_a_prompt_past_a_known_context_is_found_at_plan_time_without_a_request(server, tmp_path):
    db = tmp_path / "s.db"
    refused = plan_episodes(list(sotopia_seeds()), "CHN", server.spec, 0, 2, 1)[0]
    server.marker = refused.scenario.participants[0].name
    request = simulate.SimulateRequest(culture="CHN", episodes=2, max_turns=1, use_seeds=True, db=str(db),
                                       model=server.spec, concurrency=1)
    final = run(simulate.STAGE, request, model=model_on(server, context_tokens=4096))
    assert server.refused == 0  # never sent
    assert final["not_retried"] == 1 and final["summary"]["statuses"] == {"done": 1, "failed": 1}
    [line] = final["summary"]["failures"]
    assert (line["reason"], line["count"], line["example"], line["permanent"]) == (CONTEXT_EXCEEDED, 1, refused.id,
                                                                                    True)
    assert "a prompt of 10000 tokens, not under the 4096 tokens a request may hold" in line["error"]

    # The context unknown (any other server): nothing is said at plan time, the server's refusal is classified.
    final = run(simulate.STAGE, request, model=model_on(server))
    assert server.refused == 0 and final["not_retried"] == 1  # stored permanent: not sent again
    run(simulate.STAGE, simulate.SimulateRequest(**{**vars(request), "retry_failed": True}), model=model_on(server))
    assert server.refused == 1


def test_adapt_and_judge_list_their_failures_by_reason_and_keep_permanent_ones_for_retry_failed(server, tmp_path):
    db = tmp_path / "s.db"
    seeds = adapt.choose_seeds(list(sotopia_seeds()), 3, 0)
    server.marker = seeds[0].participants[0].name
    request = adapt.AdaptRequest(culture="CHN", n=3, db=str(db), model=server.spec, concurrency=1, max_attempts=1)
    final = run(adapt.STAGE, request, model=model_on(server))
    sid = adapt.adapted_id("CHN", seeds[0].id)
    [line] = final["summary"]["failures"]
    assert (line["reason"], line["count"], line["example"], line["permanent"]) == (CONTEXT_EXCEEDED, 1, sid, True)
    text, status = adapt.report(SimpleNamespace(chosen=seeds, culture=SimpleNamespace(name="China", code="CHN"),
                                                request=request), final["summary"])
    assert status == 1 and f"failed 1 x {CONTEXT_EXCEEDED} (permanent" in text and f"e.g. {sid}:" in text
    run(adapt.STAGE, request, model=model_on(server))
    assert server.refused == 1  # not sent again
    run(adapt.STAGE, adapt.AdaptRequest(**{**vars(request), "retry_failed": True}), model=model_on(server))
    assert server.refused == 2

    # Judging: the episodes of one adapted scenario are refused, permanently.
    server.marker = None
    run(simulate.STAGE, simulate.SimulateRequest(culture="CHN", episodes=2, max_turns=1, db=str(db), model=server.spec,
                                                 concurrency=1), model=model_on(server))
    store = Store(db)
    episode = store.episodes()[0]
    server.marker = store.scenario(episode.scenario_id).participants[0].name
    jr = judge.JudgeRequest(culture="CHN", db=str(db), model=server.spec, concurrency=1)
    final = run(judge.STAGE, jr, model=model_on(server))
    [line] = final["summary"]["failures"]
    assert (line["reason"], line["example"], line["permanent"]) == (CONTEXT_EXCEEDED, episode.id, True)
    refused = server.refused
    final = run(judge.STAGE, jr, model=model_on(server))
    assert server.refused == refused and final["summary"]["not_retried"] == 1
    server.marker = None
    final = run(judge.STAGE, judge.JudgeRequest(**{**vars(jr), "retry_failed": True}), model=model_on(server))
    assert final["summary"]["failures"] == [] and final["summary"]["this_run"]["judged"] == 1


@pytest.mark.parametrize(("exc", "permanent"), [
    (PermanentModelError("the model answered only in reasoning_content"), True),
    (SimpleNamespace(status_code=404), True),
    (SimpleNamespace(status_code=422), True),
    (SimpleNamespace(status_code=408), False),
    (SimpleNamespace(status_code=409), False),
    (SimpleNamespace(status_code=429), False),
    (SimpleNamespace(status_code=500), False),
    (ConnectionError("refused"), False),
])
def test_which_failures_are_permanent(exc, permanent):
    if isinstance(exc, SimpleNamespace):  # an exception carrying an HTTP status, as the openai client's do
        exc = type("APIStatusError", (Exception,), {"status_code": exc.status_code})("refused")
    assert failure_of(exc).permanent is permanent


def test_failure_lines_group_by_reason_most_frequent_first():
    rows = [{"item_id": f"ep-{i}", "reason": r, "error": f"{r} #{i}", "permanent": p}
            for i, (r, p) in enumerate([("b", False), ("a", True), ("b", False), ("c", False)])]
    lines = failure_lines(rows)
    assert [(x["reason"], x["count"], x["example"]) for x in lines] == [("b", 2, "ep-0"), ("a", 1, "ep-1"),
                                                                         ("c", 1, "ep-3")]
    assert failure_report(lines).count("\n") == 3 and failure_report([]) == ""
