"""`python -m eval.compare BASE.json ADAPTED.json`: before/after table of two WVS evaluations.

Laid out like the CLCA paper's Table 2: one column per country plus the average, and for each
metric the base row, the adapted row and their difference (adapted - base). For js, kl, paper_kl,
emd, map_distance and invalid_rate lower is better; for accuracy higher is better. `map_distance` is
the distance on the Inglehart-Welzel map to the country (`eval.culture_map`); when both runs have
map positions, the table ends with them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agents import cli

METRICS = ["paper_kl", "js", "kl", "emd", "map_distance", "accuracy", "invalid_rate"]
LOWER_IS_BETTER = {"paper_kl", "js", "kl", "emd", "map_distance", "invalid_rate"}
MUST_MATCH = ["items", "prompt"]


class CompareError(ValueError):
    pass


def load(path: str) -> dict:
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CompareError(f"{path}: cannot read results JSON ({exc})") from exc
    if "summary" not in results or "provenance" not in results:
        raise CompareError(f"{path}: not a results file of python -m eval.wvs (no summary/provenance)")
    return results


def table(base: dict, adapted: dict) -> str:
    countries = [c for c in base["summary"]["countries"] if c in adapted["summary"]["countries"]]
    if not countries:
        raise CompareError("the two results share no country")
    label_b, label_a = _label(base), _label(adapted)
    lines = [f"base:    {label_b}", f"adapted: {label_a}"]
    for key in MUST_MATCH:
        if base["provenance"][key] != adapted["provenance"][key]:
            lines.append(f"warning: the runs differ in {key}; the deltas mix two protocols")
    if base["provenance"]["config"]["method"] != adapted["provenance"]["config"]["method"]:
        lines.append("warning: the runs used different answer-reading methods")
    header = f"{'':22}" + "".join(f"{c:>9}" for c in countries) + f"{'Average':>9}"
    for metric in METRICS:
        cells_b = [_value(base, c, metric) for c in countries]
        cells_a = [_value(adapted, c, metric) for c in countries]
        if all(v is None for v in cells_b + cells_a):
            continue
        # the average over the shared countries only, so both rows average the same set
        avg_b, avg_a = _mean(cells_b), _mean(cells_a)
        better = "lower" if metric in LOWER_IS_BETTER else "higher"
        lines += ["", f"{metric} ({better} is better)", header]
        lines.append(f"{'  base':22}" + "".join(_cell(v) for v in [*cells_b, avg_b]))
        lines.append(f"{'  adapted':22}" + "".join(_cell(v) for v in [*cells_a, avg_a]))
        deltas = [a - b if a is not None and b is not None else None
                  for a, b in zip([*cells_a, avg_a], [*cells_b, avg_b])]
        lines.append(f"{'  delta':22}" + "".join(_cell(v, signed=True) for v in deltas))
    return "\n".join(lines + _map_lines(base, adapted, countries))


def _map_lines(base: dict, adapted: dict, countries: list[str]) -> list[str]:
    """Positions (self-expression, secular) of both runs and the target, where both runs have one."""
    maps = [(r.get("map") or {}).get("countries", {}) for r in (base, adapted)]
    shown = [c for c in countries if c in maps[0] and c in maps[1]]
    if not shown:
        return []
    pair = lambda p: f"({p[0]:+.2f}, {p[1]:+.2f})" if None not in p else "-"
    lines = ["", "culture map position (self-expression, secular); target = the country's survey answers"]
    for c in shown:
        lines.append(f"  {c}: base {pair(maps[0][c]['model']['position'])} -> adapted "
                     f"{pair(maps[1][c]['model']['position'])}, target {pair(maps[1][c]['target']['position'])}")
    return lines


def _label(results: dict) -> str:
    cfg = results["provenance"]["config"]
    return f"{cfg['model']}" + (f" + {cfg['adapter']}" if cfg.get("adapter") else "") + \
        f" ({cfg['method']}, {results['provenance']['prompt']} prompt)"


def _value(results: dict, country: str, metric: str) -> float | None:
    return results["summary"]["countries"][country]["model"].get(metric, {}).get("value")


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if len(present) == len(values) and present else None


def _cell(v: float | None, signed: bool = False) -> str:
    if v is None:
        return f"{'-':>9}"
    return f"{v:>+9.4f}" if signed else f"{v:>9.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="results JSON of the base model")
    parser.add_argument("adapted", help="results JSON of the adapted model")
    args = parser.parse_args(argv)
    try:
        print(table(load(args.base), load(args.adapted)))
    except CompareError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
