"""Prompt templates: one Jinja file per prompt, rendered strictly in a sandbox.

A user's `--prompts DIR` overrides built-in templates by file name. A prompt's version is the
hash of its template text, stored with every artefact it produced, so an edited prompt never
masquerades as the old one.

Persona attributes are rendered by their own template, `persona_attributes.j2`, and appended to a
system turn only when its reader may see one (`with_attributes`): a scenario without attributes gets
exactly the prompt, and the template versions, it had before attributes existed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agents.records import Persona

BUILTIN_DIR = Path(__file__).parent
ATTRIBUTES = "persona_attributes"


class PromptError(ValueError):
    """A template that is missing, malformed, or rendered without a variable it needs."""


@dataclass(frozen=True)
class Rendered:
    name: str
    text: str
    version: str


class Prompts:
    """Loads `<name>.j2` from the override directory first, then from the built-in ones."""

    def __init__(self, override_dir: str | Path | None = None):
        dirs = [str(override_dir)] if override_dir else []
        if override_dir and not Path(override_dir).is_dir():
            raise PromptError(f"--prompts {override_dir}: not a directory")
        self.override_dir = str(override_dir) if override_dir else None
        self.env = ImmutableSandboxedEnvironment(
            loader=ChoiceLoader([FileSystemLoader(d) for d in [*dirs, str(BUILTIN_DIR)]]),
            undefined=StrictUndefined,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
            auto_reload=False,
        )
        self._sources: dict[str, tuple[str, str]] = {}

    def source(self, name: str) -> tuple[str, str]:
        """(template text, file it came from), read once: a run's prompts and versions stay fixed."""
        if name not in self._sources:
            try:
                text, filename, _ = self.env.loader.get_source(self.env, f"{name}.j2")
            except TemplateError as exc:
                raise PromptError(f"prompt {name!r}: no template {name}.j2 ({exc})") from exc
            except (OSError, UnicodeDecodeError) as exc:
                raise PromptError(f"prompt {name!r}: cannot read {name}.j2 ({exc})".replace("\n", " ")) from None
            self._sources[name] = (text, filename)
        return self._sources[name]

    def version(self, name: str) -> str:
        return hashlib.sha256(self.source(name)[0].encode()).hexdigest()[:12]

    def render(self, name: str, **variables) -> Rendered:
        _, filename = self.source(name)
        try:
            text = self.env.get_template(f"{name}.j2").render(**variables).strip()
        except TemplateError as exc:
            raise PromptError(f"{filename}: {type(exc).__name__}: {_one_line(exc)}") from exc
        except RecursionError:
            raise PromptError(f"{filename}: a macro or include calls itself without end") from None
        except Exception as exc:  # noqa: BLE001 - whatever a template's own expressions raise (1/0, range(10**9))
            raise PromptError(f"{filename}: {type(exc).__name__}: {_one_line(exc)}") from exc
        return Rendered(name, text, self.version(name))

    def versions(self, names: list[str]) -> dict[str, str]:
        return {n: self.version(n) for n in names}

    def with_attributes(self, rendered: Rendered, reader: str, people: list[tuple[Persona, bool]]) -> Rendered:
        """`rendered` followed by the attributes `reader` may see of `people` ((persona, whether the prompt speaks
        to that persona), in the order given): all of its own, the public ones of the others.

        Unchanged when there is nothing to show (or the template renders nothing); otherwise the version
        becomes `<version>,persona_attributes:<its version>`."""
        shown = [{"name": p.name, "own": own, "attributes": p.visible_attributes(own)} for p, own in people]
        if not any(s["attributes"] for s in shown):
            return rendered
        block = self.render(ATTRIBUTES, reader=reader, people=shown)
        if not block.text:
            return rendered
        return Rendered(rendered.name, f"{rendered.text}\n\n{block.text}",
                        f"{rendered.version},{ATTRIBUTES}:{block.version}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
