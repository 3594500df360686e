"""The official WVS Wave 7 respondent file (CSV): weighted distributions, personas, true answers.

Users download the file themselves after registering at worldvaluessurvey.org; it is never bundled
or committed. Columns used (official names): B_COUNTRY (ISO numeric) or B_COUNTRY_ALPHA,
D_INTERVIEW, W_WEIGHT, the item columns Q1..Q259, and the persona columns below. Negative codes
(-1 don't know, -2 no answer, -4 not asked, -5 missing) count as missing everywhere.

Nothing is dropped or counted twice without a word. A file the reader cannot trust stops with a
one-line `WVSError` naming the file, the line and the column: a cell that is not a whole number in a
column it reads, a row with more or fewer cells than the header, a header naming a column twice, a
weight that is negative or not finite, an interview id listed twice with different cells. What can be
left out safely is left out and counted in `exclusions` (reported in the results' provenance): a row
that repeats an earlier one exactly (same country, D_INTERVIEW and cells), an item code outside the
item's options, a persona code without a codebook label.

`write_synthetic_file` makes a file with the same columns from the bundled shares, for tests and
for trying the pipeline without the real data.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eval.wvs.items import Item, WVSError, all_items
from eval.wvs.survey import BY_NUMERIC, COUNTRIES, BundledShares, Country

# Value labels of the persona columns, from the WVS-7 codebook (the CLCA paper's persona fields).
DEMOGRAPHICS: dict[str, dict[int, str]] = {
    "H_SETTLEMENT": {1: "capital city", 2: "regional centre", 3: "district centre",
                     4: "another city or town", 5: "village"},
    "H_URBRURAL": {1: "urban", 2: "rural"},
    "Q260": {1: "male", 2: "female"},
    "X003R": {1: "16-24", 2: "25-34", 3: "35-44", 4: "45-54", 5: "55-64", 6: "65 or older"},
    "Q263": {1: "yes", 2: "no, immigrated"},
    "Q273": {1: "married", 2: "living together as married", 3: "divorced", 4: "separated",
             5: "widowed", 6: "single"},
    "Q275": {0: "early childhood education or none", 1: "primary", 2: "lower secondary",
             3: "upper secondary", 4: "post-secondary non-tertiary", 5: "short-cycle tertiary",
             6: "bachelor or equivalent", 7: "master or equivalent", 8: "doctoral or equivalent"},
    "Q281": {0: "never had a job", 1: "professional and technical", 2: "higher administrative",
             3: "clerical", 4: "sales", 5: "service", 6: "skilled worker", 7: "semi-skilled worker",
             8: "unskilled worker", 9: "farm worker", 10: "farm proprietor or manager"},
    "Q279": {1: "full time (30 hours a week or more)", 2: "part time", 3: "self-employed",
             4: "retired or pensioned", 5: "homemaker, not otherwise employed", 6: "student",
             7: "unemployed", 8: "other"},
    "Q287": {1: "upper class", 2: "upper middle class", 3: "lower middle class", 4: "working class",
             5: "lower class"},
}
HOUSEHOLD = "Q270"  # number of people in the household: a count, not a code
PERSONA_COLUMNS = [*DEMOGRAPHICS, HOUSEHOLD]
# Template variable for each persona column (agents/prompts/wvs_persona.j2).
PERSONA_FIELDS = {
    "H_SETTLEMENT": "settlement", "H_URBRURAL": "urban_rural", "Q260": "sex", "X003R": "age",
    "Q263": "born_here", "Q273": "marital", "Q275": "education", "Q281": "occupation",
    "Q279": "employment", "Q287": "social_class", HOUSEHOLD: "household",
}


@dataclass(frozen=True)
class Respondent:
    interview: str  # D_INTERVIEW, or the row number where the column is absent
    weight: float
    answers: dict[str, int]  # item id -> raw code; missing answers are absent
    persona: dict[str, str | None]  # template variable -> text; None where missing


@dataclass
class Exclusion:
    """Cells or rows left out of the survey side for one reason, in one country and column."""

    country: str
    column: str
    reason: str
    count: int = 0
    lines: list[int] = field(default_factory=list)  # the first few, for looking them up

    def add(self, lineno: int) -> None:
        self.count += 1
        if len(self.lines) < 5:
            self.lines.append(lineno)

    def __str__(self) -> str:
        first = ", ".join(map(str, self.lines)) + (", ..." if self.count > len(self.lines) else "")
        return f"{self.country} {self.column}: {self.count} x {self.reason} (line {first})"


class RespondentFile:
    """Reads the columns it needs from an official WVS-7 CSV (comma or semicolon separated).

    Raises WVSError (one line: file, line, column) for a file it cannot trust; see the module docstring.
    `exclusions` lists what was left out and why; `missing_columns` the item, persona and D_INTERVIEW
    columns the file lacks (an absent item is reported as missing for every country)."""

    def __init__(self, path: str | Path, items: list[Item], weighted: bool = True):
        self.path = Path(path)
        self.weighted = weighted
        if not self.path.is_file():
            raise WVSError(f"--wvs-file {path}: no such file")
        self._items = {i.qid: i for i in items}
        self.by_country: dict[str, list[Respondent]] = {}
        self.missing_columns: set[str] = set()
        self._exclusions: dict[tuple[str, str, str], Exclusion] = {}
        self._read()

    @property
    def exclusions(self) -> list[Exclusion]:
        return list(self._exclusions.values())

    def _exclude(self, alpha3: str, column: str, reason: str, lineno: int) -> None:
        key = (alpha3, column, reason)
        self._exclusions.setdefault(key, Exclusion(alpha3, column, reason)).add(lineno)

    def _read(self) -> None:
        try:
            with self.path.open(newline="", encoding="utf-8-sig") as fh:
                head = fh.readline()
                fh.seek(0)
                reader = csv.reader(fh, delimiter=";" if head.count(";") > head.count(",") else ",")
                header = [h.strip() for h in next(reader, [])]
                col = self._columns(header)
                # (country, interview) -> (line, digest of the cells): the official file has ~100k rows of ~600 cells
                seen: dict[tuple[str, str], tuple[int, bytes]] = {}
                for row in reader:
                    lineno = reader.line_num
                    if not "".join(row).strip():
                        continue
                    if len(row) != len(header):
                        raise WVSError(f"{self.path}: line {lineno}: {len(row)} cells, the header has {len(header)}")
                    alpha3 = self._country_of(row, col, lineno)
                    if "D_INTERVIEW" in col:
                        key = (alpha3, row[col["D_INTERVIEW"]].strip())
                        if not key[1]:
                            raise WVSError(f"{self.path}: line {lineno}: column D_INTERVIEW: empty")
                        cells = hashlib.blake2b("\x1f".join(row).encode(), digest_size=16).digest()
                        if key in seen:
                            first, before = seen[key]
                            if before != cells:
                                raise WVSError(f"{self.path}: line {lineno}: column D_INTERVIEW: {key[1][:40]} "
                                               f"({alpha3}) is already on line {first} with different cells")
                            self._exclude(alpha3, "D_INTERVIEW", "row repeating an earlier row", lineno)
                            continue
                        seen[key] = (lineno, cells)
                    self.by_country.setdefault(alpha3, []).append(self._respondent(row, col, lineno, alpha3))
        except UnicodeDecodeError as exc:
            raise WVSError(f"{self.path}: line {self._undecodable_line()}: not UTF-8 text ({exc.reason}); "
                           "save the file as UTF-8") from None
        except csv.Error as exc:
            raise WVSError(f"{self.path}: line {reader.line_num}: not readable as CSV ({exc})") from None

    def _undecodable_line(self) -> int:
        """The first line that is not UTF-8 (the text reader decodes in blocks, so its position is not a line)."""
        with self.path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return lineno
        return 1

    def _columns(self, header: list[str]) -> dict[str, int]:
        col: dict[str, int] = {}
        for i, name in enumerate(header):
            if name in col and name:
                raise WVSError(f"{self.path}: line 1: column {name} appears twice "
                               f"(columns {col[name] + 1} and {i + 1})")
            col[name] = i
        if "B_COUNTRY_ALPHA" not in col and "B_COUNTRY" not in col:
            raise WVSError(f"{self.path}: line 1: no B_COUNTRY or B_COUNTRY_ALPHA column")
        if self.weighted and "W_WEIGHT" not in col:
            raise WVSError(f"{self.path}: line 1: no W_WEIGHT column (pass --unweighted to use raw counts)")
        self.missing_columns = {c for c in [*self._items, *PERSONA_COLUMNS, "D_INTERVIEW"] if c not in col}
        return col

    def _number(self, row: list[str], col: dict[str, int], name: str, lineno: int) -> float | None:
        """The cell as a finite number, None if empty or the column is absent; else a one-line error."""
        if name not in col or not row[col[name]].strip():
            return None
        cell = row[col[name]].strip()
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise WVSError(f"{self.path}: line {lineno}: column {name}: {cell[:40]!r} is not a number")
        return value

    def _code(self, row: list[str], col: dict[str, int], name: str, lineno: int) -> int | None:
        """A whole-number code (`3` or `3.0`), None where empty, absent or negative (WVS missing codes)."""
        try:  # the common case, an integer cell, without the float checks
            code = int(row[col[name]]) if name in col else None
            return code if code is None or code >= 0 else None
        except ValueError:
            pass
        value = self._number(row, col, name, lineno)
        if value is None:
            return None
        if not value.is_integer():
            raise WVSError(f"{self.path}: line {lineno}: column {name}: {row[col[name]].strip()[:40]!r} is not a "
                           "whole-number code")
        return int(value) if value >= 0 else None

    def _country_of(self, row: list[str], col: dict[str, int], lineno: int) -> str:
        if "B_COUNTRY_ALPHA" in col and row[col["B_COUNTRY_ALPHA"]].strip():
            return row[col["B_COUNTRY_ALPHA"]].strip().upper()
        numeric = self._code(row, col, "B_COUNTRY", lineno)
        if numeric not in BY_NUMERIC:
            raise WVSError(f"{self.path}: line {lineno}: column B_COUNTRY: {row[col['B_COUNTRY']].strip()[:40]!r} "
                           "is not a WVS-7 country code")
        return BY_NUMERIC[numeric].alpha3

    def _respondent(self, row: list[str], col: dict[str, int], lineno: int, alpha3: str) -> Respondent:
        answers = {}
        for qid, item in self._items.items():
            value = self._code(row, col, qid, lineno)
            if value is None:
                continue
            if value in item.codes:
                answers[qid] = value
            else:
                self._exclude(alpha3, qid, f"code outside {min(item.codes)}-{max(item.codes)}", lineno)
        persona: dict[str, str | None] = {}
        for name, labels in DEMOGRAPHICS.items():
            value = self._code(row, col, name, lineno)
            if value is not None and value not in labels:
                self._exclude(alpha3, name, "code without a codebook label (left out of the persona)", lineno)
            persona[PERSONA_FIELDS[name]] = labels.get(value) if value is not None else None
        household = self._code(row, col, HOUSEHOLD, lineno)
        persona[PERSONA_FIELDS[HOUSEHOLD]] = str(household) if household else None
        weight = 1.0
        if self.weighted:
            weight = self._number(row, col, "W_WEIGHT", lineno)
            if weight is None or weight < 0:
                cell = row[col["W_WEIGHT"]].strip()
                raise WVSError(f"{self.path}: line {lineno}: column W_WEIGHT: {cell[:40]!r} is not a weight "
                               "(a number >= 0)")
        interview = row[col["D_INTERVIEW"]].strip() if "D_INTERVIEW" in col else str(lineno)
        return Respondent(interview, weight, answers, persona)

    def countries(self) -> list[str]:
        return sorted(self.by_country)

    def respondents(self, alpha3: str) -> list[Respondent]:
        if alpha3 not in self.by_country:
            raise WVSError(f"--wvs-file {self.path}: no respondents for {alpha3} (it has: {', '.join(self.countries())})")
        return self.by_country[alpha3]

    def source(self, alpha3: str) -> str:
        how = "weighted by W_WEIGHT" if self.weighted else "unweighted"
        return f"WVS-7 respondent file {self.path.name}, {how}, shares of valid answers"

    def distribution(self, alpha3: str, item: Item) -> np.ndarray | None:
        vec = np.zeros(len(item.codes))
        for r in self.respondents(alpha3):
            code = r.answers.get(item.qid)
            if code is not None:
                vec[item.codes.index(code)] += r.weight
        return vec / vec.sum() if vec.sum() > 0 else None

    def sample(self, alpha3: str, n: int, seed: int) -> list[Respondent]:
        """`n` respondents without replacement (all of them if fewer), reproducible per seed and country."""
        pool = self.respondents(alpha3)
        rng = np.random.default_rng([seed, COUNTRIES[alpha3].numeric if alpha3 in COUNTRIES else 0])
        picked = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
        return [pool[i] for i in sorted(picked)]


def write_synthetic_file(path: str | Path, countries: list[Country], n_per_country: int, seed: int = 0,
                         missing_rate: float = 0.03) -> Path:
    """A fake WVS-7 CSV with the official column names: answers drawn from the bundled shares,
    random demographics and weights, and a few negative (missing) codes. Not real microdata."""
    rng = np.random.default_rng(seed)
    shares = BundledShares()
    items = list(all_items().values())
    columns = ["B_COUNTRY", "B_COUNTRY_ALPHA", "D_INTERVIEW", "W_WEIGHT", *PERSONA_COLUMNS, *(i.qid for i in items)]
    path = Path(path)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for c in countries:
            dists = {i.qid: shares.distribution(c.alpha3, i) for i in items}
            for k in range(n_per_country):
                row = {"B_COUNTRY": c.numeric, "B_COUNTRY_ALPHA": c.alpha3,
                       "D_INTERVIEW": c.numeric * 100000 + k + 1, "W_WEIGHT": round(float(rng.uniform(0.5, 1.5)), 4)}
                for name, labels in DEMOGRAPHICS.items():
                    row[name] = int(rng.choice(list(labels)))
                row[HOUSEHOLD] = int(rng.integers(1, 7))
                for item in items:
                    dist = dists[item.qid]
                    if dist is None:
                        row[item.qid] = -4  # not asked in this country
                    elif rng.random() < missing_rate:
                        row[item.qid] = int(rng.choice([-1, -2]))
                    else:
                        row[item.qid] = item.codes[int(rng.choice(len(dist), p=dist))]
                writer.writerow([row[name] for name in columns])
    return path
