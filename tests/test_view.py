"""The static site: what each page shows, escaping, the topology layout, export, serving and CLI errors."""

import re
import struct
import threading
import urllib.request
from html.parser import HTMLParser

import pytest

from graphs import view
from graphs.episode import build_episode_graph
from graphs.judge import FilterRule
from graphs.svg import _back_edges, _layers, topology_svg
from tests.site_data import EPISODES, JUDGEMENTS, make_store


class Elements(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self, text: str):
        super().__init__()
        self.found: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def having(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.found if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    def classed(self, tag: str, klass: str) -> list[dict]:
        return [a for t, a in self.found if t == tag and klass in (a.get("class") or "").split()]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    make_store(root / "store.db")
    totals = view.build_site(root / "store.db", root / "site")
    return root / "site", totals


def page(site, name: str) -> str:
    return (site[0] / name).read_text(encoding="utf-8")


def test_index_lists_every_episode_with_its_filter_values(site):
    html = Elements(page(site, "index.html"))
    rows = html.classed("tr", "episode")
    assert [r["data-id"] for r in rows] == sorted(e[0] for e in EPISODES)
    by_id = {r["data-id"]: r for r in rows}
    assert (by_id["ep-jpn-invalid"]["data-culture"], by_id["ep-jpn-invalid"]["data-status"],
            by_id["ep-jpn-invalid"]["data-model"]) == ("JPN", "invalid", "smollm2")
    assert by_id["ep-chn-leave"]["data-judge-label"] == '["culture: aligned", "meta: good", "quality: good"]'
    assert by_id["ep-chn-maxturns"]["data-judge-label"] == '["culture: INVALID", "meta: bad", "quality: bad"]'
    assert by_id["ep-jpn-done"]["data-judge-label"] == '["unjudged"]'
    # Kept or dropped comes from graphs.judge's own rule (the paper's by default).
    assert [by_id[i]["data-verdict"] for i in ("ep-chn-leave", "ep-chn-maxturns", "ep-jpn-done")] == [
        '["kept"]', '["dropped"]', '["unjudged"]']
    assert [s["data-key"] for s in html.having("select")] == ["culture", "status", "verdict", "judge-label", "model", "run"]
    values = [a["value"] for a in html.having("option")]
    for expected in ("CHN", "JPN", "done", "invalid", "puppet", "smollm2", "kept", "dropped", "culture: aligned"):
        assert expected in values
    assert site[1] == {"episodes": 4, "turns": 12, "intents": 11, "cultural": 4,
                       "statuses": {"done": 3, "invalid": 1}, "verdicts": {"kept": 1, "dropped": 1, "unjudged": 2}}


def test_site_under_another_filter_rule(tmp_path):
    make_store(tmp_path / "s.db")
    totals = view.build_site(tmp_path / "s.db", tmp_path / "site", FilterRule.parse("none"))
    assert totals["verdicts"] == {"kept": 2, "unjudged": 2}
    with pytest.raises(SystemExit, match="^error: filter rule 'meta=awful': label must be one of good, bad$"):
        view.main(["--db", str(tmp_path / "s.db"), "--out", str(tmp_path / "x"), "--filter", "meta=awful"])


def test_episode_page_draws_one_node_per_turn_with_its_intent(site):
    text = page(site, "episodes/ep-chn-leave.html")
    html = Elements(text)
    turns = html.classed("g", "turn")
    expected = next(e for e in EPISODES if e[0] == "ep-chn-leave")
    assert [int(t["data-turn"]) for t in turns] == [0, 1, 2, 3]
    assert [t["data-speaker"] for t in turns] == ["0", "1", "0", "1"]
    assert [t["data-action"] for t in turns] == ["speak", "non-verbal", "speak", "leave"]
    assert [t["data-intent"] for t in turns] == [i[0] for i in expected[6]]
    # Culture-citing intents are marked on their node and set apart in their own lane.
    assert [t["data-turn"] for t in turns if "cultural" in t["class"].split()] == ["0", "1", "3"]
    assert [c["data-turn"] for c in html.classed("g", "culture-callout")] == ["0", "1", "3"]
    assert html.classed("g", "end")[0]["data-ended-by"] == "leave"
    assert "leaves" in text and "Harmony matters in the culture." in text


def test_episode_page_shows_verdicts_scenario_and_provenance(site):
    text = page(site, "episodes/ep-chn-leave.html")
    html = Elements(text)
    assert [j["data-aspect"] for j in html.classed("tr", "judgement")] == ["culture", "meta", "quality"]
    for row in JUDGEMENTS["ep-chn-leave"]:
        assert row["critique"] in text and row["prompt_version"] in text
    assert html.classed("p", "outcome")[0]["data-kept"] == "true"
    dropped = page(site, "episodes/ep-chn-maxturns.html")
    assert Elements(dropped).classed("p", "outcome")[0]["data-kept"] == "false"
    assert "quality=bad@very confident" in dropped
    assert "Wang Fang" in text and "Secret:</b> It is chipped" in text and "Sell the teapot" in text
    assert "0123abcd" in text and "graphs.simulate --culture CHN" in text  # commit and run command
    assert "feedbeef0001" in text  # prompt versions
    unjudged = page(site, "episodes/ep-jpn-done.html")
    assert "Not judged yet." in unjudged


def test_invalid_turns_and_intents_are_shown_as_invalid(site):
    html = Elements(page(site, "episodes/ep-jpn-invalid.html"))
    turns = html.classed("g", "turn")
    assert "invalid" in turns[1]["class"].split() and turns[1]["data-action"] == "INVALID"
    assert "intent: none (unparseable turn)" in page(site, "episodes/ep-jpn-invalid.html")
    assert "I am an AI and cannot role-play." in page(site, "episodes/ep-jpn-invalid.html")
    maxturns = page(site, "episodes/ep-chn-maxturns.html")
    assert "intent: INVALID observer answer: no idea" in maxturns
    assert [j["class"] for j in Elements(maxturns).classed("tr", "judgement")] == [
        "judgement invalid", "judgement", "judgement"]  # culture's answer did not parse


def test_stored_text_is_escaped_everywhere(site):
    for name in ("index.html", "episodes/ep-chn-leave.html", "episodes/ep-chn-leave.svg"):
        text = page(site, name)
        assert "<script>alert" not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page(site, "episodes/ep-chn-leave.svg")


def test_site_needs_no_network(site):
    for path in site[0].rglob("*"):
        if path.suffix in (".html", ".css", ".js", ".svg"):
            text = path.read_text(encoding="utf-8").replace('xmlns="http://www.w3.org/2000/svg"', "")
            assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), path
            assert "@import" not in text and "url(http" not in text, path


def test_topology_layers_and_loops():
    graph = build_episode_graph().get_graph()
    edges = [(e.source, e.target, e.conditional, e.data) for e in graph.edges]
    nodes = list(graph.nodes)
    back = _back_edges(nodes, edges)
    assert back == {("observer", "inquirer"), ("responder", "observer")}
    layer = _layers(nodes, [(s, t) for s, t, *_ in edges if (s, t) not in back])
    assert layer == {"__start__": 0, "inquirer": 1, "observer": 2, "responder": 3, "__end__": 4}
    svg = topology_svg(graph, title="episode").svg
    assert re.findall(r'data-node="([^"]+)"', svg) == nodes
    drawn = re.findall(r'<path class="edge" data-source="([^"]+)" data-target="([^"]+)" data-conditional="(\w+)"'
                       r' d="[^"]*" fill="none" stroke="#555" stroke-width="1.4"( stroke-dasharray="6 4")? ', svg)
    dash = ' stroke-dasharray="6 4"'
    assert sorted(drawn) == sorted((s, t, str(c).lower(), dash if c else "") for s, t, c, _ in edges)


def test_topology_page_draws_every_graph(site):
    html = Elements(page(site, "graphs.html"))
    assert [i["src"] for i in html.having("img")] == [f"graphs/{n}.svg" for n in view.TOPOLOGIES]
    for name in view.TOPOLOGIES:
        svg = (site[0] / "graphs" / f"{name}.svg").read_text()
        assert svg.startswith("<svg") and 'data-node="__start__"' in svg


def test_export_svg_and_errors(site, tmp_path):
    db = site[0].parent / "store.db"
    out = view.export_episode(db, "ep-chn-leave", tmp_path / "one.svg")
    assert out.read_text() == (site[0] / "episodes" / "ep-chn-leave.svg").read_text()
    with pytest.raises(view.ViewError, match=r"--export .*one\.txt: the file name must end in \.svg or \.png"):
        view.export_episode(db, "ep-chn-leave", tmp_path / "one.txt")
    with pytest.raises(view.ViewError, match="--episode ep-nope: no such episode in"):
        view.export_episode(db, "ep-nope", tmp_path / "nope.svg")


@pytest.mark.skipif(view.find_chromium() is None, reason="no Chromium on this machine (PNG export rasterises with it)")
def test_export_png(site, tmp_path):
    db = site[0].parent / "store.db"
    out = view.export_episode(db, "ep-chn-leave", tmp_path / "one.png")
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    svg = (site[0] / "episodes" / "ep-chn-leave.svg").read_text()
    assert (width, height) == tuple(int(v) for v in re.search(r'width="(\d+)" height="(\d+)"', svg).groups())


def test_cli_errors_leave_no_store_behind(tmp_path, capsys):
    missing = tmp_path / "missing.db"
    with pytest.raises(SystemExit, match=r"^error: --db .*missing\.db: no such store"):
        view.main(["--db", str(missing), "--out", str(tmp_path / "site")])
    assert not missing.exists()
    with pytest.raises(SystemExit, match="^error: --episode and --export go together$"):
        view.main(["--db", str(missing), "--episode", "ep-1"])


def test_cli_writes_the_site_and_says_how_to_open_it(tmp_path, capsys):
    make_store(tmp_path / "s.db")
    view.main(["--db", str(tmp_path / "s.db"), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "wrote 4 episode pages (12 turns)" in printed and (tmp_path / "out" / "index.html").as_uri() in printed
    view.main(["--db", str(tmp_path / "s.db"), "--out", f"{tmp_path}/out/"])  # a trailing slash, as shells complete
    assert f"topologies to {tmp_path}/out/\n" in capsys.readouterr().out


def test_serve_on_loopback(site):
    server = view.serve(site[0], port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
            assert r.read().decode() == page(site, "index.html")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/assets/site.js", timeout=5) as r:
            assert r.status == 200
    finally:
        server.shutdown()
        server.server_close()
