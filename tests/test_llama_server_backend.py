"""The OpenAI-compatible backend against the real llama-server: structured answers, a server stopped and
restarted mid-run, and a simulation killed with SIGKILL leaving no server behind."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agents.answers import IntentAnswer, TurnAnswer
from agents.models import GenerationParams, load_model
from agents.models.llama_server import LlamaServer, find_llama_server
from tests.conftest import process_alive

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent



@pytest.fixture
def server(gguf, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with LlamaServer(gguf, slots=2, log_dir=tmp_path) as running:
        yield running
    signal.signal(signal.SIGTERM, before)


def test_structured_answers_from_the_real_server_validate(server):
    model = load_model(f"openai:smollm2@{server.base_url}", max_batch=2)  # passes the self-test
    messages = [{"role": "user", "content": "You are Li Wei. Greet your neighbour Chen Jing."}]

    async def ask():
        return await asyncio.gather(
            model.aanswer(messages, TurnAnswer, task="roleplay", params=GenerationParams(seed=1)),
            model.aanswer(messages, IntentAnswer, task="observer", params=GenerationParams(temperature=0.0)))

    turn, intent = asyncio.run(ask())
    assert isinstance(turn.answer, TurnAnswer) and isinstance(intent.answer, IntentAnswer), (turn.raw, intent.raw)
    assert model.usage.totals()["prompt_tokens_evaluated"] > 0  # read from the server's timings


def test_a_server_stopped_and_restarted_mid_run_is_retried(server, gguf, tmp_path):
    model = load_model(f"openai:smollm2@{server.base_url}", max_batch=1)
    # Enough attempts that a server still loading its model (503 under load) cannot use them all up.
    model._backoff_s, model._max_attempts = 0.5, 50
    port, binary = server.port, find_llama_server()
    server.close()  # the endpoint goes away between two requests
    restarted = {}

    def restart():  # once the run has certainly been refused (its first retry is counted), not after a guessed delay
        while model.usage.retries < 1:
            time.sleep(0.05)
        restarted["proc"] = subprocess.Popen(
            [str(binary), "-m", str(gguf), "-t", "2", "--host", "127.0.0.1", "--port", str(port), "--no-webui"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    threading.Thread(target=restart, daemon=True).start()
    try:
        [answer] = model.chat_many([[{"role": "user", "content": "Say hello."}]], task="t",
                                   params=GenerationParams(max_new_tokens=8))
        assert answer and model.usage.retries >= 1
    finally:
        time.sleep(1.1)
        restarted["proc"].kill()
        restarted["proc"].wait()



def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_graphs_simulate_leaves_no_llama_server(gguf, tmp_path):
    command = [sys.executable, "-m", "graphs.simulate", "--culture", "CHN", "--use-seeds", "--episodes", "4",
               "--max-turns", "3", "--model", "smollm2", "--db", str(tmp_path / "s.db"), "--no-progress"]
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, servers = time.monotonic() + 120, []
    while not servers and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        servers = [p for p in _children(proc.pid) if "llama-server" in Path(f"/proc/{p}/cmdline").read_text()]
    assert servers, "graphs.simulate started no llama-server"
    time.sleep(2.0)  # mid-run: the server is answering requests
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 8
    while any(map(process_alive, servers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(process_alive, servers)), "a llama-server outlived graphs.simulate"


# Per prompt, the JS distance between the server's and the in-process option distributions on SmolLM2 (Q4_1 GGUF,
# identical prompt tokens: llama.cpp computes on the quantised weights, transformers on their float32
# dequantisation). Measured at most 0.065 over clca44 for CHN (docs/benchmarks.md); this bound leaves a margin.
SERVER_AGREEMENT_JS = 0.08


def test_option_scores_on_llama_server_agree_with_in_process(server):
    """The same GGUF scored on llama-server and in process: per prompt, the distributions over the options
    ("10" a two-token label that needs the second step) agree within the measured tolerance."""
    import numpy as np

    from eval.wvs.metrics import js_distance

    served = load_model(f"openai:smollm2@{server.base_url}", structured=False, scoring=True)
    local = load_model("smollm2-inprocess", max_batch=4, structured=False, scoring=True)
    options = [str(k) for k in range(1, 11)]
    requests = [([{"role": "system", "content": f"You live in {place}."},
                  {"role": "user", "content": f"How important is {topic} in your life? Answer 1 (not at all) to 10 "
                                              "(very). ANSWER:"}], options)
                for place in ("China", "Mexico") for topic in ("family", "work")]
    got = asyncio.run(served.ascore_options(requests, task="wvs"))
    want = asyncio.run(local.ascore_options(requests, task="wvs"))
    for a, b in zip(got, want):
        pa, pb = np.exp(a), np.exp(b)
        assert 0 < pa.sum() <= 1 + 1e-6 and 0 < pb.sum() <= 1 + 1e-6
        assert float(js_distance((pa / pa.sum())[None], (pb / pb.sum())[None])[0]) < SERVER_AGREEMENT_JS
