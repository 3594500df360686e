"""Which code produced an artefact: every stage stores this next to its results."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_state() -> dict:
    """Commit of the checkout and whether tracked files had local edits; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def git_commit() -> str | None:
    """The commit as one string, '+dirty' appended when the tree had local edits."""
    state = git_state()
    return state["commit"] and state["commit"] + ("+dirty" if state["dirty"] else "")
