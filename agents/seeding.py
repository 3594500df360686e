"""Per-call sampling seeds: one number fixed by what a call is, so a resumed or rerun call samples the same."""

from __future__ import annotations

import hashlib


def call_seed(*parts: object) -> int:
    """A 32-bit sampling seed from the parts that identify one model call (run seed, item, turn or attempt, role),
    stable across processes and resumes: the first 8 hex digits of the SHA-256 of the parts joined by ":"."""
    return int(hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:8], 16)
