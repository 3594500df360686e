"""`python -m eval.compare BASE.json ADAPTED.json`: before/after table of two WVS evaluations.

Laid out like the CLCA paper's Table 2: one column per country plus the average, and for each
metric the base row, the adapted row and their difference (adapted - base). For js, kl, paper_kl,
emd, map_distance and invalid_rate lower is better; for accuracy and anchored_score higher is
better. `map_distance` is the distance on the Inglehart-Welzel map to the country
(`eval.culture_map`); when both runs have map positions, the table lists them.

Then the paired differences (`eval.wvs.paired`, from the NAME.answers.jsonl beside each file): per
country and metric the difference with its 95% paired-bootstrap interval, the two-sided p-value
Holm-corrected across every row shown, and a verdict (closer / further / no detectable change);
the header says what was resampled (personas and items, or items).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agents import cli
from eval.wvs.paired import HIGHER_IS_BETTER, Paired, PairedError, load_answers
from eval.wvs.paired import compare as paired_compare

METRICS = ["paper_kl", "js", "anchored_score", "kl", "emd", "map_distance", "accuracy", "invalid_rate"]
MUST_MATCH = ["items", "prompt", "formats"]


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
        if base["provenance"].get(key) != adapted["provenance"].get(key):
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
        better = "higher" if metric in HIGHER_IS_BETTER else "lower"
        lines += ["", f"{metric} ({better} is better)", header]
        lines.append(f"{'  base':22}" + "".join(_cell(v) for v in [*cells_b, avg_b]))
        lines.append(f"{'  adapted':22}" + "".join(_cell(v) for v in [*cells_a, avg_a]))
        deltas = [a - b if a is not None and b is not None else None
                  for a, b in zip([*cells_a, avg_a], [*cells_b, avg_b])]
        lines.append(f"{'  delta':22}" + "".join(_cell(v, signed=True) for v in deltas))
    return "\n".join(lines + _map_lines(base, adapted, countries))


def paired_table(paired: Paired) -> str:
    """The paired differences, one line per country and metric."""
    how = sorted(set(paired.resampled.values()))
    per = ", ".join(f"{c}: {r}" for c, r in paired.resampled.items()) if len(how) > 1 else how[0]
    lines = ["", (f"paired differences (adapted - base): bootstrap over {per}; {paired.n_boot} replicates; "
                  "map_distance also over its ten indicators"),
             (f"formats: {', '.join(paired.formats)} (the mean over them); p two-sided, Holm-corrected across the "
              f"{len(paired.rows)} rows"), *(f"note: {n}" for n in paired.notes),
             (f"{'metric':16}{'country':9}{'base':>10}{'adapted':>10}{'delta':>10}  {'95% interval':22}"
              f"{'p (Holm)':>9}  verdict")]
    for r in paired.rows:
        lines.append(f"{r.metric:16}{r.country:9}{r.base:>10.4f}{r.adapted:>10.4f}{r.delta:>+10.4f}  "
                     f"{f'[{r.ci[0]:+.4f}, {r.ci[1]:+.4f}]':22}{r.p_holm:>9.4f}  {r.verdict}")
    return "\n".join(lines)


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
    parser = cli.ArgumentParser(prog="python -m eval.compare", description=__doc__.splitlines()[0])
    parser.add_argument("base", help="results JSON of the base model")
    parser.add_argument("adapted", help="results JSON of the adapted model")
    parser.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap replicates (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the paired bootstrap")
    args = parser.parse_args(argv)
    if args.bootstrap < 1:
        sys.exit("error: --bootstrap must be at least 1")
    try:
        base, adapted = load(args.base), load(args.adapted)
        print(table(base, adapted))
        paired = paired_compare(base, adapted, load_answers(base, args.base), load_answers(adapted, args.adapted),
                                n_boot=args.bootstrap, seed=args.seed)
        print(paired_table(paired))
    except (CompareError, PairedError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
