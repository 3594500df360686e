"""Question formats for the format sweep (`python -m eval.wvs --formats default,reversed,letters,...`).

Survey-alignment scores move with how a question is put (Khan et al. 2025, "Randomness, not
representation"), so a run can ask every item in several formats and report each and their spread:

- `default`: the options in code order, labelled with their codes (`wvs_question.j2`; the protocol
  of the CLCA paper, and the prompt every run had before the sweep existed);
- `reversed`: the same labels, options listed last code first (1-10 scales: "from 10 to 1");
- `letters`: the options labelled A, B, ... in code order, always listed (`wvs_question_letters.j2`);
- `paraphrase1`, `paraphrase2`: the instruction reworded (`wvs_question_paraphrase1/2.j2`).

`--method distribution` uses its own templates (`wvs_distribution.j2`, `_paraphrase1/2`), with the
same rendering options. A format changes what the model reads, never what is scored: `present`
gives the item as shown (options, codes and labels in the shown order, `Item.labels` for letters),
the readers answer over it, and `restore` puts each answer row back in code order, so every format's
answers are distributions over the item's own codes.

Errors: `WVSError` (one line) for an unknown or repeated format.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace

from agents.prompts import Prompts
from eval.wvs.items import Item, WVSError
from eval.wvs.readers import ItemAnswers


@dataclass(frozen=True)
class Format:
    name: str
    reverse: bool = False  # list the options last code first
    letters: bool = False  # label the options A, B, ... instead of their codes
    template: str = ""  # suffix of the template name: "" (the method's own), "_letters", "_paraphrase1", ...


FORMATS = {f.name: f for f in [
    Format("default"), Format("reversed", reverse=True), Format("letters", letters=True, template="_letters"),
    Format("paraphrase1", template="_paraphrase1"), Format("paraphrase2", template="_paraphrase2"),
]}
SWEEP = "default,reversed,letters,paraphrase1,paraphrase2"
QUESTION_TEMPLATES = {"logprob": "wvs_question", "generate": "wvs_question", "distribution": "wvs_distribution"}


def parse_formats(spec: str) -> list[Format]:
    """`--formats`: a comma list of format names, or `all` for the five; WVSError otherwise."""
    names = [s.strip() for s in (SWEEP if spec.strip() == "all" else spec).split(",") if s.strip()]
    if not names:
        raise WVSError("--formats: no format given")
    for name in names:
        if name not in FORMATS:
            raise WVSError(f"--formats: unknown format {name!r} (use {SWEEP}, or all)")
        if names.count(name) > 1:
            raise WVSError(f"--formats: {name} given twice")
    return [FORMATS[n] for n in names]


def template_name(method: str, fmt: Format) -> str:
    """The question template a method asks in a format (distribution has no letters variant: its instruction
    names no label kind)."""
    base = QUESTION_TEMPLATES[method]
    suffix = "" if method == "distribution" and fmt.letters else fmt.template
    return base + suffix


def present(item: Item, fmt: Format) -> Item:
    """The item as the format shows it: options, codes (still the WVS codes) and labels in the shown order."""
    order = list(range(len(item.codes)))[::-1] if fmt.reverse else list(range(len(item.codes)))
    labels = tuple(string.ascii_uppercase[i] for i in range(len(order))) if fmt.letters else None
    if labels is not None and len(order) > len(string.ascii_uppercase):
        raise WVSError(f"format letters: {item.qid} has more options than letters")
    return replace(item, options=tuple(item.options[i] for i in order), codes=tuple(item.codes[i] for i in order),
                   labels=labels)


def restore(item: Item, shown: Item, answers: ItemAnswers) -> ItemAnswers:
    """`answers` over the shown options (rows [units, options + 1]) back in the item's code order; the
    INVALID column and each unit's code (a WVS code already) are unchanged."""
    columns = [shown.codes.index(c) for c in item.codes] + [len(shown.codes)]
    return replace(answers, rows=answers.rows[:, columns])


def render_question(prompts: Prompts, method: str, fmt: Format, shown: Item, answer_format: str,
                    country: str) -> str:
    """The user turn for one item (`shown`, from `present`) in one format. `answer_format` is the JSON skeleton
    of the answer when it is generated under its schema, "" for logprob and --unstructured."""
    numeric = shown.numeric_labels and not fmt.letters
    return prompts.render(
        template_name(method, fmt), question=shown.text, numeric=numeric, low=shown.codes[0], high=shown.codes[-1],
        options=[[label, o] for label, o in zip(shown.shown_labels, shown.options)], answer_format=answer_format,
        country=country,
    ).text

