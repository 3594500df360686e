"""Run a CLI with a SIGKILL planted at a chosen moment (test-only; the kill-matrix tests use it):

    CLCA_KILL_AT=write:3 python -m tests.killer graphs.simulate --culture CHN ...

CLCA_KILL_AT picks the moment:
- `write:N`: inside the N-th store write, after its rows are written and before its transaction commits
  (the N-th `sqlite_utils` `insert_all`, which every row the store writes goes through);
- `call:N`: halfway through the N-th model call (`Model.acomplete`; the puppet model's latency makes it last);
- `save:N`: inside the N-th training checkpoint, after the weights are saved and before the optimizer state
  and trainer_state.json are;
- `step:N`: as the N-th training step of this process begins;
- unset: no planted kill; the process writes "KILLER started" to stderr at its first store write or training
  step, so a test can kill it from outside a measured time later.
Nothing here changes what the command does, only when it dies.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import signal
import sys

KIND, _, N = os.environ.get("CLCA_KILL_AT", "").partition(":")
TARGET = int(N) if N else 0
counts = {"write": 0, "call": 0, "save": 0, "step": 0}
announced = False


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def event(kind: str) -> bool:
    """Count an event; True when it is the planted one."""
    global announced
    if not announced:
        announced = True
        sys.stderr.write("KILLER started\n")
        sys.stderr.flush()
    counts[kind] += 1
    return kind == KIND and counts[kind] == TARGET


def plant(module: str) -> None:
    import sqlite_utils.db

    insert_all = sqlite_utils.db.Table.insert_all

    def killing_insert_all(self, *args, **kwargs):
        result = insert_all(self, *args, **kwargs)
        if event("write"):
            die()
        return result

    sqlite_utils.db.Table.insert_all = killing_insert_all

    if module.startswith("graphs."):
        from agents.models.base import Model

        acomplete = Model.acomplete

        async def killing_acomplete(self, *args, **kwargs):
            if event("call"):
                delay = getattr(self.backend, "delay_s", 0.0) / 2
                asyncio.get_running_loop().call_later(delay, die)
            return await acomplete(self, *args, **kwargs)

        Model.acomplete = killing_acomplete
    else:
        from transformers import Trainer, TrainerCallback

        save_rng = Trainer._save_rng_state

        def killing_save_rng(self, *args, **kwargs):
            if event("save"):
                die()
            return save_rng(self, *args, **kwargs)

        Trainer._save_rng_state = killing_save_rng

        class StepKiller(TrainerCallback):
            def on_step_begin(self, *args, **kwargs):
                if event("step"):
                    die()

        init = Trainer.__init__

        def announcing_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.add_callback(StepKiller)

        Trainer.__init__ = announcing_init


if __name__ == "__main__":
    module = sys.argv[1]
    plant(module)
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
