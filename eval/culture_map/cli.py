"""`python -m eval.culture_map`: draw eval.wvs results on the Inglehart-Welzel cultural map.

    python -m eval.wvs --model smollm2 --countries CHN --items iw10 --out results/base.json
    python -m eval.wvs --model smollm2 --adapter runs/demo-adapter --countries CHN --items iw10 \\
        --out results/adapted.json
    python -m eval.culture_map results/base.json results/adapted.json --out results/map.png

Writes map.png, map.svg and map.csv (coordinates). Each results file gives one point per country
(its prompt condition); a result without an adapter and one with an adapter of the same model,
prompt and method are joined by an arrow. A file without the map's items is an error naming them.
"""

from __future__ import annotations

import sys

from agents import cli
from eval.culture_map.draw import draw
from eval.culture_map.results import read_points
from eval.wvs.map_indicators import MapError


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(prog="python -m eval.culture_map", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results JSON files of python -m eval.wvs (with --items iw10)")
    parser.add_argument("--out", default="culture-map.png", help="PNG path; the SVG and CSV go beside it")
    parser.add_argument("--title", default=None, help="figure title (default: says what is drawn)")
    args = parser.parse_args(argv)
    try:
        points = [p for path in args.results for p in read_points(path)]
        paths = draw(points, args.out, args.title)
    except MapError as exc:
        sys.exit(f"error: {exc}")
    for p in points:
        print(f"{p.country}  {p.label}: ({p.position[0]:+.2f}, {p.position[1]:+.2f}), target "
              f"({p.target[0]:+.2f}, {p.target[1]:+.2f}), map_distance {p.distance:.3f}")
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
