"""Survey answer distributions per country and item, from the bundled shares or a respondent file.

A distribution is a vector over an item's options (in code order) that sums to 1. The bundled
shares come from two unweighted releases (see data/SOURCE.md): CultureSPA for its 19 countries,
Cao et al. 2025 for the other 27 (Japan among them). `respondents.RespondentFile` offers the same
interface for the official WVS-7 CSV.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

from eval.wvs.items import DATA_DIR, Item, WVSError


@dataclass(frozen=True)
class Country:
    alpha3: str  # as in the WVS file's B_COUNTRY_ALPHA
    numeric: int  # B_COUNTRY, ISO 3166-1 numeric
    name: str  # reads naturally after "You live in"


# WVS-7 countries and territories, codes as in the official codebook (Morocco is MOR there).
_COUNTRIES = [
    ("ALB", 8, "Albania"), ("AND", 20, "Andorra"), ("ARG", 32, "Argentina"), ("ARM", 51, "Armenia"),
    ("AUS", 36, "Australia"), ("AUT", 40, "Austria"), ("AZE", 31, "Azerbaijan"), ("BGD", 50, "Bangladesh"),
    ("BLR", 112, "Belarus"), ("BOL", 68, "Bolivia"), ("BIH", 70, "Bosnia and Herzegovina"),
    ("BRA", 76, "Brazil"), ("BGR", 100, "Bulgaria"), ("CAN", 124, "Canada"), ("CHL", 152, "Chile"),
    ("CHN", 156, "China"), ("COL", 170, "Colombia"), ("HRV", 191, "Croatia"), ("CYP", 196, "Cyprus"),
    ("CZE", 203, "Czechia"), ("DNK", 208, "Denmark"), ("ECU", 218, "Ecuador"), ("EGY", 818, "Egypt"),
    ("EST", 233, "Estonia"), ("ETH", 231, "Ethiopia"), ("FIN", 246, "Finland"), ("FRA", 250, "France"),
    ("GEO", 268, "Georgia"), ("DEU", 276, "Germany"), ("GBR", 826, "Great Britain"), ("GRC", 300, "Greece"),
    ("GTM", 320, "Guatemala"), ("HKG", 344, "Hong Kong"), ("HUN", 348, "Hungary"), ("ISL", 352, "Iceland"),
    ("IND", 356, "India"), ("IDN", 360, "Indonesia"), ("IRN", 364, "Iran"), ("IRQ", 368, "Iraq"),
    ("ITA", 380, "Italy"), ("JPN", 392, "Japan"), ("JOR", 400, "Jordan"), ("KAZ", 398, "Kazakhstan"),
    ("KEN", 404, "Kenya"), ("KGZ", 417, "Kyrgyzstan"), ("LVA", 428, "Latvia"), ("LBN", 422, "Lebanon"),
    ("LBY", 434, "Libya"), ("LTU", 440, "Lithuania"), ("MAC", 446, "Macao"), ("MYS", 458, "Malaysia"),
    ("MDV", 462, "the Maldives"), ("MEX", 484, "Mexico"), ("MNG", 496, "Mongolia"),
    ("MNE", 499, "Montenegro"), ("MOR", 504, "Morocco"), ("MMR", 104, "Myanmar"),
    ("NLD", 528, "the Netherlands"), ("NZL", 554, "New Zealand"), ("NIC", 558, "Nicaragua"),
    ("NGA", 566, "Nigeria"), ("MKD", 807, "North Macedonia"), ("NIR", 909, "Northern Ireland"),
    ("NOR", 578, "Norway"), ("PAK", 586, "Pakistan"), ("PER", 604, "Peru"), ("PHL", 608, "the Philippines"),
    ("POL", 616, "Poland"), ("PRT", 620, "Portugal"), ("PRI", 630, "Puerto Rico"), ("ROU", 642, "Romania"),
    ("RUS", 643, "Russia"), ("SRB", 688, "Serbia"), ("SGP", 702, "Singapore"), ("SVK", 703, "Slovakia"),
    ("SVN", 705, "Slovenia"), ("KOR", 410, "South Korea"), ("ESP", 724, "Spain"), ("SWE", 752, "Sweden"),
    ("CHE", 756, "Switzerland"), ("TWN", 158, "Taiwan"), ("TJK", 762, "Tajikistan"), ("THA", 764, "Thailand"),
    ("TUN", 788, "Tunisia"), ("TUR", 792, "Turkey"), ("UKR", 804, "Ukraine"), ("USA", 840, "the United States"),
    ("URY", 858, "Uruguay"), ("VEN", 862, "Venezuela"), ("VNM", 704, "Vietnam"), ("ZWE", 716, "Zimbabwe"),
]
COUNTRIES = {a: Country(a, n, name) for a, n, name in _COUNTRIES}
BY_NUMERIC = {c.numeric: c for c in COUNTRIES.values()}


def country(code: str) -> Country:
    """Look up an ISO alpha-3 code (case-insensitive) among the WVS-7 countries."""
    found = COUNTRIES.get(code.strip().upper())
    if found is None:
        raise WVSError(f"--countries: unknown country {code!r} (use ISO alpha-3 codes such as CHN,DEU,GBR,MEX,JPN)")
    return found


class BundledShares:
    """Published per-country shares: CultureSPA where it has the country, else Cao et al. 2025."""

    SOURCES = {
        "culturespa": ("proportions_culturespa.json",
                       "CultureSPA (Xu et al. 2025), unweighted, renormalised over valid codes"),
        "cao2025": ("proportions_cao2025.json", "Cao et al. 2025, unweighted, shares of valid answers"),
    }

    def __init__(self):
        self._tables = {key: _load(fname) for key, (fname, _) in self.SOURCES.items()}

    def countries(self) -> list[str]:
        return sorted(set(self._tables["culturespa"]) | set(self._tables["cao2025"]))

    def _table_for(self, alpha3: str) -> str:
        for key in ("culturespa", "cao2025"):
            if alpha3 in self._tables[key]:
                return key
        bundled = ", ".join(self.countries())
        raise WVSError(f"country {alpha3}: no bundled survey shares (bundled: {bundled}); pass --wvs-file")

    def source(self, alpha3: str) -> str:
        return self.SOURCES[self._table_for(alpha3)][1]

    def distribution(self, alpha3: str, item: Item) -> np.ndarray | None:
        """Shares over the item's options, or None where the item was not asked in that country."""
        raw = self._tables[self._table_for(alpha3)][alpha3].get(item.qid) or {}
        vec = np.array([raw.get(str(code), 0.0) for code in item.codes], dtype=float)
        total = vec.sum()
        return vec / total if total > 0 else None


@functools.lru_cache(maxsize=2)
def _load(fname: str) -> dict:
    return json.loads((DATA_DIR / fname).read_text())
