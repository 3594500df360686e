"""A static site of the store's episodes: conversation graphs, scenarios, verdicts, provenance.

    python -m graphs.view --db runs/demo.db --out site/                      # write the site
    python -m graphs.view --db runs/demo.db --out site/ --serve              # ... and serve it on localhost
    python -m graphs.view --db runs/demo.db --episode ep-1234 --export ep.svg   # one episode (.svg or .png)

The site works offline (no CDN, no network): an index filterable by culture, status, judge label,
model and run (a command line's or a served run's); one page per episode; a page of the state machines' topologies. PNG export rasterises the SVG
with a local headless Chromium.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from agents import cli
from agents.records import Intent, Scenario, Turn
from graphs.adapt import build_adapt_graph
from graphs.episode import build_episode_graph
from graphs.filter import (
    PAPER_RULE,
    FilterRule,
    FilterRuleError,
    Verdict,
    add_filter_arguments,
    valid_turns,
    verdict,
)
from graphs.judge import build_judge_graph
from graphs.quality import REASONS as QUALITY_REASONS
from graphs.quality import EpisodeQuality, episode_quality
from graphs.store import EpisodeRecord, Judgement, RunRecord, Store, git_commit, now
from graphs.svg import Drawing, conversation_svg, topology_svg

ASSETS = Path(__file__).parent / "view_assets"
STATIC = ("site.css", "site.js")
# The state machines drawn on the topology page, by name.
TOPOLOGIES = {"episode": build_episode_graph, "adapt": build_adapt_graph, "judge": build_judge_graph}


class ViewError(ValueError):
    """Something the viewer was asked for that the store or the machine cannot give."""


@dataclass(frozen=True)
class EpisodeView:
    """Everything one episode page shows, read from the store once."""

    row: EpisodeRecord
    scenario: Scenario | None
    turns: list[Turn]
    intents: dict[int, Intent]
    judgements: list[Judgement]
    run: RunRecord | None
    verdicts: dict[str, Verdict]  # judge model -> keep or drop, under the site's filter rule
    quality: EpisodeQuality  # the rule-based quality gate on its valid turns (gated turns are marked)

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def names(self) -> tuple[str, str]:
        if self.scenario:
            return self.scenario.participants[0].name, self.scenario.participants[1].name
        seen = {t.speaker: t.name for t in self.turns}
        return seen.get(0, "speaker 0"), seen.get(1, "speaker 1")

    @property
    def labels(self) -> list[str]:
        """`aspect: label` per judgement, the index's judge-label filter values; `unjudged` when none."""
        if not self.judgements:
            return ["unjudged"]
        return sorted({f"{j.aspect}: {j.label if j.valid else 'INVALID'}" for j in self.judgements})

    @property
    def outcome(self) -> list[str]:
        """`kept` / `dropped` per judge model (both when judges disagree); `unjudged` when none judged."""
        return sorted({"kept" if v.kept else "dropped" for v in self.verdicts.values() if v.judged}) or ["unjudged"]

    @property
    def cultural_intents(self) -> list[Intent]:
        return [i for i in self.intents.values() if i.valid and i.cultural]

    def drawing(self) -> Drawing:
        title = f"{self.id} · {self.row.culture} · {self.row.model}"
        return conversation_svg(self.names, self.turns, self.intents, self.row.ended_by, title=title)


def load_episodes(store: Store, rule: FilterRule = PAPER_RULE) -> list[EpisodeView]:
    runs = {r.id: r for r in store.runs()}
    scenarios: dict[str, Scenario | None] = {}
    views = []
    for row in store.episodes():
        sid = row.scenario_id
        if sid not in scenarios:
            scenarios[sid] = store.scenario(sid)
        views.append(episode_view(store, row, scenarios[sid], runs.get(row.run_id), rule))
    return views


def episode_view(store: Store, row: EpisodeRecord, scenario: Scenario | None, run: RunRecord | None,
                 rule: FilterRule = PAPER_RULE) -> EpisodeView:
    judgements = store.judgements(row.id)
    by_judge: dict[str, list[Judgement]] = {}
    for j in judgements:
        by_judge.setdefault(j.judge_model, []).append(j)
    turns = store.turns(row.id)
    return EpisodeView(
        row=row, scenario=scenario, turns=turns,
        intents={i.turn_index: i for i in store.intents(row.id)}, judgements=judgements, run=run,
        verdicts={m: verdict(rows, rule) for m, rows in by_judge.items()},
        quality=episode_quality(valid_turns(turns)),
    )


def build_site(db: str | Path, out: str | Path, rule: FilterRule = PAPER_RULE) -> dict:
    """Write the site into `out`; returns counts for the command line to print."""
    store = _open_store(db)
    out = Path(out)
    (out / "episodes").mkdir(parents=True, exist_ok=True)
    (out / "graphs").mkdir(exist_ok=True)
    (out / "assets").mkdir(exist_ok=True)
    for name in STATIC:
        shutil.copyfile(ASSETS / name, out / "assets" / name)
    episodes = load_episodes(store, rule)
    provenance = {"store": str(Path(db).resolve()), "generated": now(), "git": git_commit(), "rule": str(rule)}
    env = _templates()
    filters = {
        "culture": sorted({e.row.culture for e in episodes}),
        "status": sorted({e.row.status for e in episodes}),
        "verdict": sorted({v for e in episodes for v in e.outcome}),
        "judge label": sorted({v for e in episodes for v in e.labels}),
        "model": sorted({e.row.model for e in episodes}),
        "run": sorted({e.row.run_id for e in episodes if e.row.run_id}),
    }
    # A run is shown by what started it: a command line, or a served run (graph, thread and run ids).
    labels = {"run": {e.row.run_id: _run_label(e.row.run_id, e.run) for e in episodes if e.row.run_id}}
    totals = {
        "episodes": len(episodes), "turns": sum(len(e.turns) for e in episodes),
        "intents": sum(len(e.intents) for e in episodes),
        "cultural": sum(len(e.cultural_intents) for e in episodes),
        "statuses": dict(Counter(e.row.status for e in episodes)),
        "verdicts": dict(Counter(v for e in episodes for v in e.outcome)),
    }
    _write(out / "index.html", env.get_template("index.html.j2").render(
        episodes=episodes, filters=filters, labels=labels, totals=totals, provenance=provenance, root="."))
    for e in episodes:
        drawing = e.drawing()
        (out / "episodes" / f"{e.id}.svg").write_text(drawing.svg, encoding="utf-8")
        _write(out / "episodes" / f"{e.id}.html", env.get_template("episode.html.j2").render(
            e=e, svg=drawing.svg, provenance=provenance, root="..", as_json=_as_json,
            quality_reasons=QUALITY_REASONS))
    graphs = []
    for name, build in TOPOLOGIES.items():
        graph = build().get_graph()
        (out / "graphs" / f"{name}.svg").write_text(topology_svg(graph, title=name).svg, encoding="utf-8")
        graphs.append({"name": name, "doc": (sys.modules[build.__module__].__doc__ or "").strip(),
                       "mermaid": graph.draw_mermaid()})
    _write(out / "graphs.html", env.get_template("graphs.html.j2").render(
        graphs=graphs, provenance=provenance, root="."))
    return totals


def export_episode(db: str | Path, episode_id: str, path: str | Path) -> Path:
    """One episode's conversation graph as a standalone .svg, or a .png rasterised by Chromium."""
    path = Path(path)
    if path.suffix.lower() not in (".svg", ".png"):
        raise ViewError(f"--export {path}: the file name must end in .svg or .png")
    store = _open_store(db)
    row = store.episode(episode_id)
    if row is None:
        raise ViewError(f"--episode {episode_id}: no such episode in {db}")
    drawing = episode_view(store, row, store.scenario(row.scenario_id), None).drawing()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".svg":
        path.write_text(drawing.svg, encoding="utf-8")
    else:
        rasterise(drawing, path)
    return path


def rasterise(drawing: Drawing, path: Path) -> None:
    """SVG -> PNG with a headless Chromium from the system (no download, no network)."""
    browser = find_chromium()
    if browser is None:
        raise ViewError("PNG export needs Chromium (Debian: apt-get install chromium); export .svg instead")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "drawing.svg"
        page.write_text(drawing.svg, encoding="utf-8")
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile", f"--screenshot={path.resolve()}",
                 f"--window-size={drawing.width},{drawing.height}", "--hide-scrollbars"]
        done = subprocess.run([browser, *flags, page.as_uri()], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not path.is_file():
        raise ViewError(f"{browser} could not draw {path}: {done.stderr.strip().splitlines()[-1:]}")


# Headless and quiet: no background connections (the machine may have no network at all).
CHROMIUM_FLAGS = ["--headless", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"] + (["--no-sandbox"] if os.geteuid() == 0 else [])


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def serve(out: str | Path, port: int = 8000, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """An HTTP server for the site, bound to loopback; the caller runs `serve_forever()`."""
    handler = functools.partial(_QuietHandler, directory=str(out))
    return http.server.ThreadingHTTPServer((host, port), handler)


# ------------------------------------------------------------------ CLI


def make_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m graphs.view", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default="runs/clca.db", help="SQLite store written by graphs.simulate")
    p.add_argument("--out", default="site", help="folder to write the site into")
    p.add_argument("--serve", action="store_true", help="after writing, serve the site on localhost")
    p.add_argument("--port", type=int, default=8000, help="port for --serve")
    add_filter_arguments(p, "rule for the kept/dropped verdicts shown")
    p.add_argument("--episode", help="with --export: the episode id to draw")
    p.add_argument("--export", help="with --episode: write its conversation graph to this .svg or .png file")
    return p


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if bool(args.episode) != bool(args.export):
        sys.exit("error: --episode and --export go together")
    try:
        if args.export:
            print(f"wrote {export_episode(args.db, args.episode, args.export)}")
            return
        totals = build_site(args.db, args.out, FilterRule.parse(args.filter, args.on_invalid, args.quality_gate))
    except (ViewError, FilterRuleError) as exc:
        sys.exit(f"error: {exc}")
    index = Path(args.out).resolve() / "index.html"
    folder = args.out.rstrip("/") + "/"  # "site/" as given prints as site/, not site//
    print(f"wrote {totals['episodes']} episode pages ({totals['turns']} turns) and the graph topologies to "
          f"{folder}\nopen {index.as_uri()}   or serve it: python -m graphs.view --db {args.db} "
          f"--out {args.out} --serve")
    if args.serve:
        try:
            server = serve(args.out, args.port)
        except OSError as exc:
            sys.exit(f"error: --port {args.port}: {exc.strerror}")
        print(f"serving {folder} on http://127.0.0.1:{server.server_address[1]}/  (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            server.server_close()


# ------------------------------------------------------------------ private


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the stdlib's signature
        pass


def _open_store(db: str | Path) -> Store:
    """Open an existing store only: the viewer must never create an empty one by a typo."""
    if not Path(db).is_file():
        raise ViewError(f"--db {db}: no such store (make one with python -m graphs.simulate)")
    return Store(db)


def _templates() -> Environment:
    return Environment(loader=FileSystemLoader(ASSETS), autoescape=select_autoescape(["j2", "html"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _run_label(run_id: str, run: RunRecord | None) -> str:
    if run is None:
        return run_id
    served = run.config.get("served")
    if served:
        return f"{run_id}: served {served.get('graph_id')}, run {served.get('run_id')}"
    return f"{run_id}: {run.command}"[:120]


def _as_json(value: dict | None) -> str:
    """A stored JSON field (config, prompt versions, usage), pretty-printed for reading; "" when absent."""
    return "" if value is None else json.dumps(value, indent=2, sort_keys=True)


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
