"""The map's ten indicators as data (data/iw_items.yaml) and their values from answer shares.

An indicator's value is linear in the answer shares of its WVS-7 items (see the YAML header):
`offset + sum_q scores[q] . share_q`, with each share vector renormalised over the options that have
a score. The same function serves survey shares (one vector per item) and a model's answer
distributions (any leading axes, e.g. bootstrap replicates), so a model that answers exactly like a
country gets exactly that country's values.

Errors: `MapError` (a `ValueError`) with a one-line message, e.g. the items a result lacks.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from eval.wvs.items import all_items, named_set

DATA_DIR = Path(__file__).parent / "data"
DIMENSIONS = ("survival_self_expression", "traditional_secular")  # map x, map y
AXIS_LABELS = {"survival_self_expression": ("Survival values", "Self-expression values"),
               "traditional_secular": ("Traditional values", "Secular-rational values")}


class MapError(ValueError):
    """Input the culture map cannot use: missing items, a bad results file, an unfitted projection."""


@dataclass(frozen=True)
class Indicator:
    key: str
    label: str
    ivs: str  # IVS variable name (F063, Y003, ...)
    dimension: str  # one of DIMENSIONS
    toward: int  # +1: higher values toward secular / self-expression; -1: toward traditional / survival
    offset: float
    scores: dict[str, tuple[float | None, ...]]  # WVS-7 item -> score per option (code order); None = not counted


@functools.lru_cache(maxsize=1)
def indicators() -> tuple[Indicator, ...]:
    """The ten indicators in file order (five traditional-secular, then five survival-self-expression)."""
    raw = yaml.safe_load((DATA_DIR / "iw_items.yaml").read_text())
    items = all_items()
    out = []
    for entry in raw["indicators"]:
        scores = {q: tuple(s) for q, s in entry["scores"].items()}
        for q, s in scores.items():  # the file must match the bundled question texts
            if q not in items or len(items[q].options) != len(s):
                raise MapError(f"iw_items.yaml: {entry['key']}: item {q} is not a WVS-7 item with {len(s)} options")
        if entry["dimension"] not in DIMENSIONS or entry["toward"] not in (1, -1):
            raise MapError(f"iw_items.yaml: {entry['key']}: bad dimension or toward")
        out.append(Indicator(entry["key"], entry["label"], entry["ivs"], entry["dimension"], entry["toward"],
                             float(entry["offset"]), scores))
    return tuple(out)


def keys() -> list[str]:
    return [ind.key for ind in indicators()]


@functools.lru_cache(maxsize=1)
def map_items() -> tuple[str, ...]:
    """The 14 WVS-7 items the ten indicators need, in questionnaire order: eval.wvs's `iw10` item set, which
    must be exactly the items this file scores (MapError otherwise)."""
    iw10 = named_set("iw10")
    if {q for ind in indicators() for q in ind.scores} != set(iw10):
        raise MapError("iw_items.yaml: its items are not the iw10 set of eval/wvs/data/item_sets.json")
    return iw10


def missing_items(available) -> list[str]:
    have = set(available)
    return [q for q in map_items() if q not in have]


def indicator_values(dists: Mapping[str, np.ndarray]) -> np.ndarray:
    """Indicator values from answer distributions.

    dists: WVS-7 item id -> array [..., options] of shares or probabilities in code order (no
    INVALID bin; totals need not be 1). Leading axes must broadcast across items.
    Returns [..., 10] in the IVS variables' own scales (e.g. god 1..10, autonomy -2..2), NaN where
    an item has no mass on its scored options. Raises MapError naming the items that are absent.
    """
    missing = missing_items(dists)
    if missing:
        raise MapError(f"missing the culture map's items {', '.join(missing)}")
    columns = []
    for ind in indicators():
        value = ind.offset
        for qid, scores in ind.scores.items():
            d = np.asarray(dists[qid], dtype=float)
            counted = np.array([s is not None for s in scores])
            s = np.array([0.0 if x is None else x for x in scores])
            with np.errstate(invalid="ignore", divide="ignore"):
                value = value + (d[..., counted] @ s[counted]) / d[..., counted].sum(axis=-1)
        columns.append(value)
    return np.stack(np.broadcast_arrays(*columns), axis=-1)
