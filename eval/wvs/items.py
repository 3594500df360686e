"""WVS-7 items: question text, answer options with their raw WVS codes, and ordinal/nominal scale.

Item sets are data (data/item_sets.json): `clca44` is the CLCA paper's set (Q1-Q41 and Q43-Q45, the
"Social Values, Norms, Stereotypes" block without Q42), listed by its topic blocks; `iw10` is exactly
the 14 items behind the ten indicators of the Inglehart-Welzel cultural map (`eval.culture_map` reads
its indicator file against it); `clca44:train` and `clca44:test` are fixed held-out splits of clca44,
drawn once by `draw_split` (stratified over the topic blocks, seed recorded in the file and in every
result's provenance); `all` is every value item that has survey shares; or a comma list.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).parent / "data"

ITEM_SETS_FILE = DATA_DIR / "item_sets.json"

# WVS codes these items with 0 as their first option (CultureSPA's `zero_questions`, checked
# against the official codebook); everywhere else the first option is code 1.
ZERO_BASED = frozenset(
    [f"Q{i}" for i in range(94, 106)] + ["Q119"] + [f"Q{i}" for i in range(122, 130)]
    + [f"Q{i}" for i in range(241, 250)]
)

# Options without a meaningful order (or with an off-scale option such as "hard to say first",
# "not allowed to vote", "against democracy"): earth mover's distance is not computed for them.
NOMINAL = frozenset(
    ["Q56", "Q91", "Q92", "Q93", "Q111", "Q119", "Q149", "Q150", "Q152", "Q153", "Q154", "Q155",
     "Q156", "Q157", "Q173", "Q174", "Q175", "Q221", "Q222", "Q254"]
    + [f"Q{i}" for i in range(241, 250)]
)

# Q223 is party choice (country-specific parties); Q260 onwards are demographics.
NOT_VALUE_ITEMS = frozenset(["Q223"] + [f"Q{i}" for i in range(260, 291)])


class WVSError(ValueError):
    """Bad evaluator input: unknown item or country, unreadable respondent file, bad option."""


@dataclass(frozen=True)
class Item:
    qid: str
    text: str
    options: tuple[str, ...]  # labels, in WVS code order
    codes: tuple[int, ...]  # the raw WVS code of each option
    scale: str  # "ordinal" or "nominal"
    # What a question format (eval.wvs.formats) shows before each option instead of its code ("A", "B", ...);
    # None: the codes themselves. Options and codes may also be in a shown order other than the code order.
    labels: tuple[str, ...] | None = None

    @property
    def shown_labels(self) -> tuple[str, ...]:
        """The label the model reads and answers with for each option, in the order of `options`."""
        return self.labels if self.labels is not None else tuple(str(c) for c in self.codes)

    @property
    def numeric_labels(self) -> bool:
        """1-10 style scales whose labels are the numbers themselves (anchors are in the text)."""
        return all(o.strip().isdigit() for o in self.options)

    def index_of(self, code: int) -> int | None:
        return self.codes.index(code) if code in self.codes else None


@functools.lru_cache(maxsize=1)
def all_items() -> dict[str, Item]:
    """Every value item of the bundled question file, by id, in questionnaire order."""
    items = {}
    for q in json.loads((DATA_DIR / "wvs_questions.json").read_text()):
        qid = q["Q_id"]
        if qid in NOT_VALUE_ITEMS or not q["option_lst"]:
            continue
        first = 0 if qid in ZERO_BASED else 1
        items[qid] = Item(
            qid=qid, text=q["question"], options=tuple(q["option_lst"]),
            codes=tuple(range(first, first + len(q["option_lst"]))),
            scale="nominal" if qid in NOMINAL else "ordinal",
        )
    return items


@functools.lru_cache(maxsize=1)
def item_sets() -> dict:
    """The parsed data/item_sets.json: {"sets": {name: {description, items | blocks}}, "splits": {...}}."""
    return json.loads(ITEM_SETS_FILE.read_text())


def named_set(name: str) -> tuple[str, ...]:
    """Item ids of a named set (`clca44`, `iw10`) or split (`clca44:train`, `clca44:test`), in questionnaire order.

    Raises WVSError for an unknown name."""
    data = item_sets()
    base, _, part = name.partition(":")
    if part:
        split = data["splits"].get(base)
        if split is None or part not in ("train", "test"):
            raise WVSError(f"--items: unknown split {name!r} (splits: {', '.join(split_names())})")
        return tuple(split[part])
    entry = data["sets"].get(name)
    if entry is None:
        raise WVSError(f"--items: unknown item set {name!r}")
    return tuple(entry["items"]) if "items" in entry else tuple(q for qs in entry["blocks"].values() for q in qs)


def split_names() -> list[str]:
    return [f"{base}:{part}" for base in item_sets()["splits"] for part in ("train", "test")]


def split_record(spec: str) -> dict | None:
    """Provenance of a split spec: {name, seed, test_fraction, train, test}; None for anything else."""
    base, _, part = spec.partition(":")
    split = item_sets()["splits"].get(base) if part else None
    return {"name": spec, **split} if split is not None else None


def draw_split(blocks: dict[str, list[str]], seed: int, test_fraction: float) -> tuple[list[str], list[str]]:
    """(train, test) item ids: from each topic block, round(fraction * size) items (at least one) go to test,
    drawn by `numpy.random.default_rng(seed)` block by block in file order; both keep questionnaire order.
    How `clca44:train` / `clca44:test` were made, once; the stored lists are the reference."""
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for qids in blocks.values():
        k = max(1, round(test_fraction * len(qids)))
        test |= {qids[i] for i in rng.choice(len(qids), size=k, replace=False)}
    order = [q for qs in blocks.values() for q in qs]
    return [q for q in order if q not in test], [q for q in order if q in test]


def select_items(spec: str) -> list[Item]:
    """`clca44`, `iw10`, `clca44:train`, `clca44:test`, `all`, or a comma list of ids such as `Q1,Q27,Q45`."""
    items = all_items()
    if spec in item_sets()["sets"] or ":" in spec:
        return [items[q] for q in named_set(spec)]
    if spec == "all":
        return list(items.values())
    chosen = []
    for qid in (s.strip() for s in spec.split(",")):
        if qid not in items:
            raise WVSError(f"--items: unknown item {qid!r} (use clca44, iw10, {', '.join(split_names())}, all, "
                           "or ids such as Q1,Q27)")
        if items[qid] in chosen:
            raise WVSError(f"--items: {qid} given twice (each item is scored once)")
        chosen.append(items[qid])
    if not chosen:
        raise WVSError("--items: no item given")
    return chosen
