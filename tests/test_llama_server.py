"""The managed llama-server: found, started, asked, stopped; and never outliving the process that started it."""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agents.models import ModelSpecError, llama_server
from agents.models.llama_server import STOP_GRACE_S, LlamaServer, find_llama_server, shared_server
from tests.conftest import process_alive, sigint_as_in_a_terminal

ROOT = Path(__file__).resolve().parent.parent
GONE_WITHIN_S = 8.0  # PDEATHSIG is immediate; the watchdog polls every 0.2 s and waits 3 s before SIGKILL



@pytest.fixture(autouse=True)
def _keep_sigterm_handler():
    """start() installs a SIGTERM handler in the process it runs in; give pytest its own back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)



def _wait_gone(pid: int, within_s: float = GONE_WITHIN_S) -> bool:
    deadline = time.monotonic() + within_s
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _single_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


class TestFindBinary:
    def test_env_pointing_nowhere_says_how_to_get_one(self, monkeypatch, tmp_path):
        monkeypatch.setenv("CLCA_LLAMA_SERVER", str(tmp_path / "no-such-llama-server"))
        with pytest.raises(ModelSpecError) as exc:
            find_llama_server()
        message = _single_line(exc)
        assert "no-such-llama-server" in message and "make llama-server" in message
        assert "smollm2-inprocess" in message
        with pytest.raises(ModelSpecError, match="make llama-server"):  # start() fails the same way
            LlamaServer(tmp_path / "m.gguf", slots=1, log_dir=tmp_path).start()

    def test_beside_python_then_path_then_error(self, monkeypatch, tmp_path):
        monkeypatch.delenv("CLCA_LLAMA_SERVER", raising=False)
        venv_bin, path_dir = tmp_path / "venv-bin", tmp_path / "on-path"
        for folder in (venv_bin, path_dir):
            folder.mkdir()
            (folder / "llama-server").write_text("#!/bin/sh\n")
            (folder / "llama-server").chmod(0o755)
        monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
        monkeypatch.setenv("PATH", str(path_dir))
        assert find_llama_server() == venv_bin / "llama-server"
        (venv_bin / "llama-server").unlink()
        assert find_llama_server() == path_dir / "llama-server"
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        with pytest.raises(ModelSpecError) as exc:
            find_llama_server()
        assert "make llama-server" in _single_line(exc) and "cmake" in str(exc.value)

    def test_command_sizes_context_per_slot_and_lets_extra_args_override(self, tmp_path):
        server = LlamaServer(tmp_path / "m.gguf", slots=4, ctx_per_slot=1024, threads=3, log_dir=tmp_path,
                             extra_args=["--cache-reuse", "256"])
        cmd = server.command(Path("/bin/llama-server"), 5555)
        assert cmd[cmd.index("-np") + 1] == "4" and cmd[cmd.index("-c") + 1] == "4096"
        assert cmd[cmd.index("-t") + 1] == "3" and cmd[cmd.index("--port") + 1] == "5555"
        assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--no-webui" in cmd
        assert cmd[-2:] == ["--cache-reuse", "256"]


def test_sigterm_handler_only_where_the_application_has_none():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    llama_server._exit_on_sigterm()
    assert signal.getsignal(signal.SIGTERM) is llama_server._raise_system_exit
    with pytest.raises(SystemExit) as exc:
        llama_server._raise_system_exit(signal.SIGTERM, None)
    assert exc.value.code == 128 + signal.SIGTERM

    def own(signum, frame):
        pass

    signal.signal(signal.SIGTERM, own)
    llama_server._exit_on_sigterm()
    assert signal.getsignal(signal.SIGTERM) is own


@pytest.mark.integration
class TestServer:
    def test_health_structured_answer_and_clean_close(self, gguf, tmp_path):
        schema = {"type": "object", "properties": {"colour": {"enum": ["blue", "green", "red"]}},
                  "required": ["colour"], "additionalProperties": False}
        with LlamaServer(gguf, slots=2, ctx_per_slot=1024, log_dir=tmp_path) as server:
            assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
            health = httpx.get(server.base_url.removesuffix("/v1") + "/health", timeout=10)
            assert health.json() == {"status": "ok"}
            reply = httpx.post(server.base_url + "/chat/completions", timeout=120, json={
                "messages": [{"role": "user", "content": "What colour is the sky on a clear day? Answer in JSON."}],
                "max_tokens": 32, "temperature": 0,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "x", "schema": schema, "strict": True}},
            })
            answer = json.loads(reply.json()["choices"][0]["message"]["content"])
            assert set(answer) == {"colour"} and answer["colour"] in ("blue", "green", "red")
            proc = server.proc
        assert proc.poll() is not None and not process_alive(proc.pid)
        server.close()  # again: nothing to do
        log = (tmp_path / "llama-server.log").read_text()
        assert f"--port {server.port}" in log and "cleaning up before exit" in log  # stopped by SIGTERM, cleanly

    def test_bad_gguf_is_one_line_naming_the_log(self, gguf, tmp_path):
        server = LlamaServer(tmp_path / "missing.gguf", slots=1, log_dir=tmp_path / "logs")
        with pytest.raises(ModelSpecError) as exc:
            server.start()
        message = _single_line(exc)
        assert "exited with code" in message and "missing.gguf" in message
        assert str(tmp_path / "logs" / "llama-server.log") in message
        assert server.proc.poll() is not None

    def test_not_ready_in_time_is_one_line_and_leaves_nothing(self, gguf, tmp_path):
        server = LlamaServer(gguf, slots=1, ctx_per_slot=512, log_dir=tmp_path)
        with pytest.raises(ModelSpecError) as exc:
            server.start(timeout_s=0)
        assert "not ready after 0 s" in _single_line(exc) and "llama-server.log" in str(exc.value)
        assert not process_alive(server.proc.pid)

    def test_a_port_taken_before_the_server_binds_it_is_tried_again(self, gguf, tmp_path, monkeypatch):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            ports = iter([taken.getsockname()[1]])
            free_port = llama_server._free_port
            monkeypatch.setattr(llama_server, "_free_port", lambda: next(ports, None) or free_port())
            with LlamaServer(gguf, slots=1, ctx_per_slot=512, log_dir=tmp_path) as server:
                assert server.running and server.port != taken.getsockname()[1]
        assert "couldn't bind" in (tmp_path / "llama-server.log").read_text()

    def test_shared_server_is_one_per_gguf_and_restarts_when_dead(self, gguf, tmp_path):
        llama_server._shared.clear()
        try:
            first = shared_server(gguf, slots=2, log_dir=tmp_path)
            assert shared_server(gguf, slots=6, log_dir=tmp_path / "other") is first and first.slots == 2
            pid = os.fork()
            if pid == 0:  # a forked copy of this process does not own the server: its close() does nothing
                first.close()
                os._exit(0)
            os.waitpid(pid, 0)
            assert first.running
            first.close()
            second = shared_server(gguf, slots=3, log_dir=tmp_path)
            assert second is not first and second.running and second.slots == 3
        finally:
            for server in llama_server._shared.values():
                server.close()
            llama_server._shared.clear()


# A process that starts a server (from its main thread, from a worker thread that then ends, or with
# the watchdog that non-Linux systems use), prints the server's and the watchdog's pids once the worker thread has
# left the kernel's task list (its exit is what PR_SET_PDEATHSIG would act on), and sleeps.
CHILD = """
import os, sys, threading, time
from pathlib import Path
from agents.models import llama_server

how, gguf, log_dir = sys.argv[1:]
if how == "watchdog":
    llama_server._prctl = None
servers = []
start = lambda: servers.append(llama_server.LlamaServer(Path(gguf), slots=1, ctx_per_slot=512,
                                                        log_dir=Path(log_dir)).start())
if how == "thread":
    worker = threading.Thread(target=start)
    worker.start()
    worker.join()
    while str(worker.native_id) in os.listdir("/proc/self/task"):
        time.sleep(0.01)
else:
    start()
watchdog = servers[0]._watchdog
print(servers[0].proc.pid, watchdog.pid if watchdog else 0, flush=True)
time.sleep(600)
"""


def _start_child(how: str, gguf: Path, tmp_path: Path) -> tuple[subprocess.Popen, int, int]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, how, str(gguf), str(tmp_path)], cwd=ROOT,
                             preexec_fn=sigint_as_in_a_terminal,
                             stdout=subprocess.PIPE, stderr=(tmp_path / "child.err").open("wb"), text=True)
    ready, _, _ = select.select([child.stdout], [], [], 120)
    line = child.stdout.readline() if ready else ""
    if not line:
        child.kill()
        pytest.fail(f"the child printed no pids: {(tmp_path / 'child.err').read_text()[-2000:]}")
    server_pid, watchdog_pid = map(int, line.split())
    return child, server_pid, watchdog_pid


# A bound, not a race: SIGTERM and Ctrl-C stop the server in order (at most STOP_GRACE_S, then SIGKILL) before the
# child exits; a loaded machine slows both.
STOP_WAIT_S = 4 * STOP_GRACE_S + 60


@pytest.mark.integration
@pytest.mark.parametrize("how, sig", [
    ("main", signal.SIGKILL), ("main", signal.SIGTERM), ("main", signal.SIGINT),
    ("thread", signal.SIGKILL), ("watchdog", signal.SIGKILL),
])
def test_no_server_outlives_its_parent(gguf, tmp_path, how, sig):
    child, server_pid, watchdog_pid = _start_child(how, gguf, tmp_path)
    try:
        assert process_alive(server_pid)  # "thread": the starting thread has ended; the server must not follow it
        child.send_signal(sig)
        child.wait(STOP_WAIT_S)
        assert _wait_gone(server_pid), f"llama-server {server_pid} outlived its parent ({how}, {sig.name})"
        if watchdog_pid:
            assert _wait_gone(watchdog_pid)
    finally:
        child.kill()
        for pid in (server_pid, watchdog_pid):
            if pid and process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert child.returncode == 128 + signal.SIGTERM  # our handler's SystemExit, so atexit ran close()
    if sig != signal.SIGKILL:  # close() ran: the server got SIGTERM and shut down in order, not PDEATHSIG's SIGKILL
        assert "cleaning up before exit" in (tmp_path / "llama-server.log").read_text()
