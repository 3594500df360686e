"""WVS-7 items: question text, answer options with their raw WVS codes, and ordinal/nominal scale.

Item sets: `clca44` is the CLCA paper's set (Q1-Q41 and Q43-Q45, the "Social Values, Norms,
Stereotypes" block without Q42); `iw10` is exactly the 14 items behind the ten indicators of the
Inglehart-Welzel cultural map (`eval.culture_map`); `all` is every value item that has survey
shares; or a comma list.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"

CLCA44 = tuple([f"Q{i}" for i in range(1, 42)] + ["Q43", "Q44", "Q45"])

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


def select_items(spec: str) -> list[Item]:
    """`clca44`, `iw10`, `all`, or a comma list of ids such as `Q1,Q27,Q45`."""
    items = all_items()
    if spec == "clca44":
        return [items[q] for q in CLCA44]
    if spec == "iw10":
        from eval.culture_map.indicators import map_items  # the map's data file is the one list

        return [items[q] for q in map_items()]
    if spec == "all":
        return list(items.values())
    chosen = []
    for qid in (s.strip() for s in spec.split(",")):
        if qid not in items:
            raise WVSError(f"--items: unknown item {qid!r} (use clca44, iw10, all, or ids such as Q1,Q27)")
        if items[qid] in chosen:
            raise WVSError(f"--items: {qid} given twice (each item is scored once)")
        chosen.append(items[qid])
    if not chosen:
        raise WVSError("--items: no item given")
    return chosen
