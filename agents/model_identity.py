"""What a model spec names, apart from where it is served: the part of a spec that stored keys derive from.

Its own module, below `agents.models`, so the store and the dataset exporter (which load no model) can key on it.
"""

from __future__ import annotations


def model_identity(spec: str) -> str:
    """The model a spec names, without where it is served: `openai:M@URL` (or `@URL1,URL2`) -> `openai:M`; every
    other spec is its own identity (a hub id, folder, GGUF path, `smollm2`, `puppet`). Stored ids and keys derive
    from this, so the same model moved to another endpoint finds the work it did (docs/reliability.md)."""
    if spec.startswith("openai:") and "@" in spec:
        return "openai:" + spec.removeprefix("openai:").rpartition("@")[0]
    return spec
