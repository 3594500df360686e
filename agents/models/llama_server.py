"""llama.cpp's `llama-server` as a child of this process: started on first use, gone when we are.

Lifecycle guarantees:

- `close()` stops the server: SIGTERM, then SIGKILL after a grace period. It is idempotent and is
  registered with `atexit`, so it runs on a normal exit, an uncaught exception and Ctrl-C
  (KeyboardInterrupt). SIGTERM's default action would skip atexit, so `start()` (from the main
  thread) installs a handler that raises SystemExit, unless the application already has one.
- The server runs in its own session: a terminal's Ctrl-C reaches only us, and we stop the server
  after our own clean-up, not before it.
- When we die without running any Python (SIGKILL, a crash, the OOM killer), Linux kills the server:
  it is forked with `prctl(PR_SET_PDEATHSIG, SIGKILL)`. That signal fires when the *thread* that
  forked the child exits, not the process, so every server is forked from one daemon thread that
  lives as long as the process. `start()` therefore works from any thread; a worker thread that
  ends does not take the server with it.
- Without prctl (not Linux), a small watchdog process polls our pid and kills the server when we
  are gone (within about a second).
- A forked copy of this process (os.fork) does not own the server and never stops it.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from typing import Self

from agents.models.base import ModelSpecError

ENV_BINARY = "CLCA_LLAMA_SERVER"
LOG_NAME = "llama-server.log"
# Prompt reuse. Prompt caching (`--cache-prompt`) is on by default: a request on a slot that holds
# the same prefix evaluates only the new suffix. `--cache-ram` keeps the KV state of prompts pushed
# out of their slot in host memory and restores the best match when a request lands on another slot
# (an episode's next turn, its other speaker's view, the observer). Measured here on SmolLM2 (6
# episodes x 3 views x 3 rounds on 3 slots): 42% of prompt tokens evaluated with it, 59% without.
# One cached SmolLM2 token takes 22 KiB, so 8 GiB (this build's default, stated so that another build
# cannot differ) holds about 380k tokens. `--cache-reuse` stays off (0): it shifts cached chunks that
# follow a changed prefix into place, but their KV was computed after other text, so answers are no
# longer what the model computes from the prompt. `--slot-prompt-similarity` stays at 0.1 (default):
# 0.5 evaluated as many tokens in the same test.
CACHE_RAM_MIB = 8192
SLOT_PROMPT_SIMILARITY = 0.1
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 120.0
PORT_ATTEMPTS = 3  # the free port we found may be taken before the server binds it
PR_SET_PDEATHSIG = 1


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the forked child only calls it
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()

# Polls its parent (us) and stops the server once we are gone; used only where prctl is missing.
_WATCHDOG = """\
import os, signal, sys, time
parent, server = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == parent:
    time.sleep(0.2)
for sig, pause in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0)):
    try:
        os.kill(server, sig)
    except ProcessLookupError:
        break
    time.sleep(pause)
"""


def find_llama_server() -> Path:
    """The binary: $CLCA_LLAMA_SERVER, else beside this Python (where `make llama-server` puts it), else PATH."""
    env = os.environ.get(ENV_BINARY)
    if env:
        if os.access(env, os.X_OK) and Path(env).is_file():
            return Path(env)
        raise ModelSpecError(f"${ENV_BINARY}={env} is not an executable file: fix or unset it, "
                             "run `make llama-server` (needs cmake and a C++ compiler), or use --model smollm2-inprocess")
    beside = Path(sys.executable).parent / "llama-server"  # not resolved: a venv's python is a symlink
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    raise ModelSpecError("llama-server not found (not in $CLCA_LLAMA_SERVER, beside python, or on PATH): "
                         "run `make llama-server` (needs cmake and a C++ compiler) or use --model smollm2-inprocess")


class LlamaServer:
    """One `llama-server` for one GGUF file on a free loopback port, with `slots` parallel sequences.

    The context is `slots * ctx_per_slot` tokens, split evenly across the slots. `extra_args` go last,
    so they override the flags chosen here. Output (ours and the server's) is appended to
    `log_dir/llama-server.log`.
    """

    def __init__(self, gguf: Path, *, slots: int, ctx_per_slot: int = 4096, threads: int | None = None,
                 log_dir: Path, extra_args: Sequence[str] = ()):
        if slots < 1 or ctx_per_slot < 1:
            raise ValueError(f"slots and ctx_per_slot must be positive, got {slots} and {ctx_per_slot}")
        self.gguf, self.slots, self.ctx_per_slot = Path(gguf), slots, ctx_per_slot
        self.threads = threads or _usable_cpus()
        self.log_path = Path(log_dir) / LOG_NAME
        self.extra_args = tuple(extra_args)
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self._owner = os.getpid()

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible endpoint, for `openai:` clients."""
        if self.port is None:
            raise RuntimeError("LlamaServer.base_url before start()")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, binary: Path, port: int) -> list[str]:
        return [str(binary), "-m", str(self.gguf), "-t", str(self.threads), "-np", str(self.slots),
                "-c", str(self.slots * self.ctx_per_slot), "--host", "127.0.0.1", "--port", str(port),
                "--no-webui", "-cb", "--cache-ram", str(CACHE_RAM_MIB),
                "--slot-prompt-similarity", str(SLOT_PROMPT_SIMILARITY), *self.extra_args]

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> LlamaServer:
        """Start the server and wait until `GET /health` says ok; raise ModelSpecError (one line) if it does not."""
        if self.proc is not None:
            raise RuntimeError("LlamaServer.start() called twice")
        binary = find_llama_server()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        _exit_on_sigterm()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            offset = self._launch(binary)
            try:
                self._wait_ready(timeout_s, offset)
                break
            except BaseException as exc:  # Ctrl-C while waiting included: leave nothing behind
                self.close()
                port_taken = isinstance(exc, ModelSpecError) and "couldn't bind" in self._log_since(offset)
                if not port_taken or attempt == PORT_ATTEMPTS:
                    raise
        return self

    def close(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `grace_s`). Safe to call again; a no-op in a forked child."""
        if self.proc is None or os.getpid() != self._owner:
            return
        atexit.unregister(self.close)
        for proc in (self.proc, self._watchdog):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def __enter__(self) -> Self:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LlamaServer({self.gguf.name}, slots={self.slots}, port={self.port}, running={self.running})"

    def _launch(self, binary: Path) -> int:
        """Spawn the server on a free port; return where its output starts in the log."""
        self.port, self._owner = _free_port(), os.getpid()
        cmd = self.command(binary, self.port)
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            offset = log.tell()
            log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} clca pid {os.getpid()}: {shlex.join(cmd)}\n".encode())
            log.flush()
            self.proc = _spawn(cmd, stdout=log, stderr=subprocess.STDOUT)
        atexit.register(self.close)
        if _prctl is None:
            self._watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.proc.pid)],
                                              start_new_session=True)
        return offset

    def _wait_ready(self, timeout_s: float, offset: int) -> None:
        url = f"http://127.0.0.1:{self.port}/health"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                raise ModelSpecError(f"llama-server for {self.gguf.name} {how} before it was ready: "
                                     f"{self._tail(offset)} (log: {self.log_path})")
            try:
                with opener.open(url, timeout=5) as reply:  # 503 (an HTTPError) while the model loads
                    if json.load(reply).get("status") == "ok":
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ModelSpecError(f"llama-server for {self.gguf.name} not ready after {timeout_s:.0f} s: "
                                     f"{self._tail(offset)} (log: {self.log_path})")
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _tail(self, offset: int, n: int = 3) -> str:
        lines = [line.strip()[:200] for line in self._log_since(offset).splitlines()[1:] if line.strip()]
        return " | ".join(lines[-n:]) or "(no output)"


_shared: dict[tuple[Path, Path | None], LlamaServer] = {}  # (GGUF, GGUF LoRA or None) -> its server
_shared_lock = threading.Lock()


def shared_server(gguf: Path, slots: int, log_dir: Path, lora: Path | None = None) -> LlamaServer:
    """This process's server for `gguf` (with the GGUF LoRA `lora` applied: `--lora`), started by its first caller
    with that caller's `slots` and `log_dir`.

    One server per GGUF file per process, shared by every stage of a command, so the model is loaded
    once and prompts cached by one stage serve the next. A later caller that asks for more slots gets
    the same server: read `server.slots` for how many it has. A server that has died is restarted.
    """
    key = (Path(gguf).resolve(), Path(lora).resolve() if lora else None)
    with _shared_lock:  # a second caller waits for the first one's server rather than starting another
        server = _shared.get(key)
        if server is None or not server.running or server._owner != os.getpid():
            extra = ("--lora", str(key[1])) if lora else ()
            server = _shared[key] = LlamaServer(key[0], slots=slots, log_dir=Path(log_dir), extra_args=extra).start()
        return server


def stop_shared() -> None:
    """Stop this process's shared servers, so the next `shared_server` call starts afresh (a benchmark that
    compares slot counts must not inherit the first run's server or its prompt cache)."""
    with _shared_lock:
        for server in _shared.values():
            server.close()
        _shared.clear()


## Private helpers


def _usable_cpus() -> int:
    """CPUs this process may run on (a container's cpuset), which llama.cpp's thread count should not exceed."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _exit_on_sigterm() -> None:
    """Make SIGTERM run atexit (and so `close()`), unless the application handles SIGTERM itself.

    Only the main thread may set handlers; from another thread, SIGTERM still ends us and the
    parent-death signal then kills the server, only without its graceful stop.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum, frame):
    raise SystemExit(128 + signum)


class _Spawner:
    """Forks children from one daemon thread that lives as long as the process.

    PR_SET_PDEATHSIG is delivered when the thread that forked the child exits, so forking from a
    short-lived worker thread would kill the server with it. A daemon thread is neither joined nor
    stopped at interpreter exit (unlike an executor's workers), so `close()` still runs first.
    """

    def __init__(self):
        self._jobs: SimpleQueue = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # also after os.fork: threads are not copied
                self._thread = threading.Thread(target=self._run, name="llama-server-spawner", daemon=True)
                self._thread.start()
        done: Future = Future()
        self._jobs.put((cmd, kwargs, done))
        return done.result()

    def _run(self) -> None:
        while True:
            cmd, kwargs, done = self._jobs.get()
            try:
                done.set_result(subprocess.Popen(cmd, **kwargs))
            except Exception as exc:  # noqa: BLE001 - re-raised in the thread that asked
                done.set_exception(exc)


_spawner = _Spawner()


def _spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Popen in a new session, killed by the kernel when this process dies (Linux) or by the watchdog."""
    if _prctl is None:
        return subprocess.Popen(cmd, start_new_session=True, **kwargs)
    return _spawner.popen(cmd, start_new_session=True, preexec_fn=_die_with(os.getpid()), **kwargs)


def _die_with(parent: int):
    """The forked child's last step before exec: SIGKILL me when my parent dies, and check it has not already."""
    prctl = _prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl: no signal will come (prctl(2))
            os._exit(1)

    return preexec
