"""SVG drawings, made without a network or graphviz: conversation graphs and state-machine topologies.

A conversation is drawn as one lane per speaker: each turn is a node in its speaker's lane, arrows
follow the order of speech, the observer's intent sits inside the node, and intents that cite the
culture are set apart in a lane of their own. A topology is a layered drawing of
`compiled_graph.get_graph()`: forward edges point down, loops come back up on the right side,
conditional edges are dashed. Text widths are estimated, so every font is a fixed-size sans-serif.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from html import escape

from agents.records import Action, Intent, Turn

FONT = "DejaVu Sans, Verdana, Arial, sans-serif"
CHAR_W = 7.0  # px per character at 12 px: a safe upper bound for the average glyph of the fonts above
LINE_H = 16
MAX_TEXT_LINES = 10  # longer utterances are cut with an ellipsis; the page's transcript keeps them whole

SPEAKER_COLOURS = ("#2f6db5", "#b5542f")
CULTURE_COLOUR = "#a67c00"
INVALID_COLOUR = "#c0392b"


@dataclass(frozen=True)
class Drawing:
    svg: str
    width: int
    height: int


# ------------------------------------------------------------------ conversations


def conversation_svg(names: tuple[str, str], turns: list[Turn], intents: dict[int, Intent],
                     ended_by: str | None, title: str = "") -> Drawing:
    """Turns as nodes in one lane per speaker; a final node says how the episode ended."""
    lane_w, gap, margin, cult_w = 340, 40, 20, 260
    box_w = lane_w - 20
    chars = int((box_w - 20) / CHAR_W)
    lane_x = [margin, margin + lane_w + gap]
    cult_x = margin + 2 * (lane_w + gap)
    width = cult_x + cult_w + margin
    y = margin + (28 if title else 0)
    parts: list[str] = []
    if title:
        parts.append(_text(margin, margin + 14, title, size=15, weight="bold"))
    for k, name in enumerate(names):
        parts.append(_lane_header(lane_x[k], y, lane_w, name, SPEAKER_COLOURS[k], f"speaker {k}"))
    parts.append(_lane_header(cult_x, y, cult_w, "culture-citing intents", CULTURE_COLOUR, "observer"))
    y += 52
    anchors: list[tuple[float, float, float]] = []  # (centre x, top y, bottom y) per turn
    for turn in turns:
        intent = intents.get(turn.index)
        x = lane_x[turn.speaker] + 10
        body = _wrap(turn.text if turn.valid else turn.raw, chars) or ["(nothing said)"]
        intent_lines = _intent_lines(intent, turn, chars)
        height = 26 + LINE_H * len(body) + 10 + LINE_H * len(intent_lines) + 8
        cultural = bool(intent and intent.valid and intent.cultural)
        parts.append(_turn_node(x, y, box_w, height, turn, body, intent, intent_lines, cultural))
        if cultural:
            parts.append(_culture_callout(cult_x, y, cult_w, x + box_w, intent, chars=int((cult_w - 20) / CHAR_W)))
        anchors.append((x + box_w / 2, y, y + height))
        y += height + 26
    end_x = (lane_x[0] + lane_x[1] + lane_w) / 2
    parts.append(_end_node(end_x, y, ended_by))
    for (x0, _, b0), (x1, t1, _) in zip(anchors, anchors[1:] + [(end_x, y, y)]):
        parts.insert(0, _arrow(x0, b0, x1, t1))
    return _svg(width, y + 50, parts, "conversation")


def _lane_header(x: float, y: float, w: float, label: str, colour: str, role: str) -> str:
    return (f'<rect x="{x}" y="{y}" width="{w}" height="36" rx="6" fill="{colour}" fill-opacity="0.12" '
            f'stroke="{colour}"/>' + _text(x + 10, y + 15, label, weight="bold", colour=colour)
            + _text(x + 10, y + 30, role, size=10, colour="#555"))


def _turn_node(x, y, w, h, turn: Turn, body, intent, intent_lines, cultural) -> str:
    colour = SPEAKER_COLOURS[turn.speaker] if turn.valid else INVALID_COLOUR
    action = turn.action.value if turn.action else "INVALID"
    dash = ' stroke-dasharray="5 3"' if not turn.valid else ""
    leave = turn.action is Action.LEAVE
    badge = "leaves" if leave else action
    attrs = (f'class="turn{" cultural" if cultural else ""}{" invalid" if not turn.valid else ""}" '
             f'data-turn="{turn.index}" data-speaker="{turn.speaker}" data-action="{escape(action)}" '
             f'data-intent="{escape(intent.intent if intent else "")}"')
    out = [f"<g {attrs}>", f"<title>{escape(turn.raw or turn.text)}</title>",
           f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="#fff" stroke="{colour}" '
           f'stroke-width="{3 if leave else 1.5}"{dash}/>',
           _text(x + 10, y + 17, f"#{turn.index}  {turn.name}", weight="bold", colour=colour),
           _badge(x + w - 10, y + 6, badge, INVALID_COLOUR if leave or not turn.valid else colour)]
    if cultural:
        out.append(_badge(x + w - 16 - _badge_width(badge), y + 6, "culture", CULTURE_COLOUR))
    ty = y + 26 + LINE_H - 4
    style = "italic" if turn.action is Action.NON_VERBAL else "normal"
    for line in body:
        out.append(_text(x + 10, ty, line, style=style))
        ty += LINE_H
    sep = ty - LINE_H + 10
    out.append(f'<line x1="{x + 8}" y1="{sep}" x2="{x + w - 8}" y2="{sep}" stroke="#ddd"/>')
    ty = sep + LINE_H
    intent_colour = CULTURE_COLOUR if cultural else ("#555" if intent and intent.valid else INVALID_COLOUR)
    for k, line in enumerate(intent_lines):
        out.append(_text(x + 10, ty, line, size=11, colour=intent_colour, css="intent" if k == 0 else ""))
        ty += LINE_H
    out.append("</g>")
    return "".join(out)


def _intent_lines(intent: Intent | None, turn: Turn, chars: int) -> list[str]:
    if intent is None:
        return ["intent: none (unparseable turn)" if not turn.valid else "intent: not labelled"]
    if not intent.valid:
        return _wrap(f"intent: INVALID observer answer: {intent.raw}", chars)[:3]
    return _wrap(f"intent: {intent.intent}", chars)


def _culture_callout(x, y, w, from_x, intent: Intent, chars: int) -> str:
    lines = _wrap(intent.intent, chars)
    if intent.reason:
        lines += _wrap(f"why: {intent.reason}", chars)
    h = 12 + LINE_H * len(lines)
    out = [f'<g class="culture-callout" data-turn="{intent.turn_index}">',
           f'<line x1="{from_x}" y1="{y + 18}" x2="{x}" y2="{y + 18}" stroke="{CULTURE_COLOUR}" '
           f'stroke-dasharray="2 3"/>',
           f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{CULTURE_COLOUR}" fill-opacity="0.08" '
           f'stroke="{CULTURE_COLOUR}"/>']
    ty = y + LINE_H
    for line in lines:
        out.append(_text(x + 10, ty, line, size=11, colour="#5c4500"))
        ty += LINE_H
    out.append("</g>")
    return "".join(out)


def _end_node(cx: float, y: float, ended_by: str | None) -> str:
    label = f"ended by {ended_by}" if ended_by else "not finished"
    w = 40 + CHAR_W * len(label)
    colour = INVALID_COLOUR if ended_by in ("invalid", None) else "#333"
    return (f'<g class="end" data-ended-by="{escape(ended_by or "")}"><rect x="{cx - w / 2}" y="{y}" width="{w}" '
            f'height="30" rx="15" fill="#f4f4f4" stroke="{colour}"/>'
            + _text(cx, y + 20, label, anchor="middle", colour=colour, weight="bold") + "</g>")


# ------------------------------------------------------------------ topologies


def topology_svg(graph, title: str = "") -> Drawing:
    """A layered drawing of a LangGraph `Graph` (from `compiled.get_graph()`)."""
    nodes = list(graph.nodes)
    edges = [(e.source, e.target, bool(e.conditional), e.data) for e in graph.edges]
    back = _back_edges(nodes, edges)
    layer = _layers(nodes, [(s, t) for s, t, *_ in edges if (s, t) not in back])
    rows: dict[int, list[str]] = {}
    for n in nodes:
        rows.setdefault(layer[n], []).append(n)
    node_w, node_h, dx, dy, margin = 150, 36, 40, 70, 30
    top = margin + (30 if title else 0)
    widest = max(len(r) for r in rows.values())
    # Room for long edges bending left and loops coming back on the right.
    left, right = 80, 160
    width = int(left + widest * node_w + (widest - 1) * dx + right)
    centre = left + (width - left - right) / 2
    pos: dict[str, tuple[float, float]] = {}
    for k, row in sorted(rows.items()):
        row_w = len(row) * node_w + (len(row) - 1) * dx
        for j, n in enumerate(row):
            pos[n] = (centre - row_w / 2 + j * (node_w + dx) + node_w / 2, top + k * (node_h + dy) + node_h / 2)
    parts = [_text(margin, margin + 10, title, size=15, weight="bold")] if title else []
    loops = 0
    for s, t, conditional, label in edges:
        (x0, y0), (x1, y1) = pos[s], pos[t]
        dash = ' stroke-dasharray="6 4"' if conditional else ""
        if (s, t) in back or s == t:
            loops += 1
            reach = node_w / 2 + 25 + 22 * loops
            path = f"M{x0 + node_w / 2},{y0} C{x0 + reach},{y0} {x1 + reach},{y1} {x1 + node_w / 2},{y1}"
            mid = (max(x0, x1) + 0.75 * reach, (y0 + y1) / 2)
        elif layer[t] - layer[s] > 1:  # a long edge bends left around the nodes between
            reach = node_w / 2 + 40
            path = f"M{x0 - node_w / 2},{y0} C{x0 - reach},{y0} {x1 - reach},{y1} {x1 - node_w / 2},{y1}"
            mid = (min(x0, x1) - 0.75 * reach, (y0 + y1) / 2)
        else:
            path = f"M{x0},{y0 + node_h / 2} L{x1},{y1 - node_h / 2}"
            mid = ((x0 + x1) / 2, (y0 + y1) / 2)
        parts.append(f'<path class="edge" data-source="{escape(s)}" data-target="{escape(t)}" '
                     f'data-conditional="{str(conditional).lower()}" d="{path}" '
                     f'fill="none" stroke="#555" stroke-width="1.4"{dash} marker-end="url(#arrow)"/>')
        if label:
            parts.append(_text(mid[0] + 4, mid[1], str(label), size=10, colour="#555"))
    for n in nodes:
        x, y = pos[n]
        terminal = n in ("__start__", "__end__")
        label = graph.nodes[n].name.strip("_") if terminal else graph.nodes[n].name
        fill = "#ffffff" if n == "__start__" else "#d9d2ff" if n == "__end__" else "#f2f0ff"
        parts.append(f'<g class="node" data-node="{escape(n)}"><rect x="{x - node_w / 2}" y="{y - node_h / 2}" '
                     f'width="{node_w}" height="{node_h}" rx="{node_h / 2 if terminal else 8}" fill="{fill}" '
                     f'stroke="#6a5acd"/>' + _text(x, y + 4, label, anchor="middle") + "</g>")
    height = top + len(rows) * (node_h + dy) - dy + margin
    return _svg(width, int(height), parts, "topology")


def _back_edges(nodes: list[str], edges) -> set[tuple[str, str]]:
    """Edges that close a cycle in a depth-first walk from the start node(s)."""
    out = {n: [t for s, t, *_ in edges if s == n] for n in nodes}
    state: dict[str, int] = {}  # 1 = on the walk's stack, 2 = finished
    back: set[tuple[str, str]] = set()

    def walk(n: str) -> None:
        state[n] = 1
        for t in out[n]:
            if state.get(t) == 1:
                back.add((n, t))
            elif t not in state:
                walk(t)
        state[n] = 2

    targets = {t for _, t, *_ in edges}
    for root in [n for n in nodes if n == "__start__"] + [n for n in nodes if n not in targets] + nodes:
        if root not in state:
            walk(root)
    return back


def _layers(nodes: list[str], forward: list[tuple[str, str]]) -> dict[str, int]:
    """Longest path from a source over the acyclic edges; the end node goes below everything else."""
    layer = {n: 0 for n in nodes}
    for _ in nodes:  # at most len(nodes) relaxation rounds on a DAG
        changed = False
        for s, t in forward:
            if layer[t] < layer[s] + 1:
                layer[t], changed = layer[s] + 1, True
        if not changed:
            break
    if "__end__" in layer:
        layer["__end__"] = max([v for n, v in layer.items() if n != "__end__"], default=0) + 1
    return layer


# ------------------------------------------------------------------ primitives


def _wrap(text: str, chars: int) -> list[str]:
    lines = [piece for para in text.splitlines() for piece in (textwrap.wrap(para, chars) or [""])]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) > MAX_TEXT_LINES:
        lines = lines[:MAX_TEXT_LINES - 1] + [lines[MAX_TEXT_LINES - 1][: chars - 1] + "…"]
    return lines


def _text(x, y, text, *, size=12, weight="normal", colour="#222", anchor="start", style="normal", css="") -> str:
    klass = f' class="{css}"' if css else ""
    return (f'<text{klass} x="{x}" y="{y}" font-size="{size}" font-weight="{weight}" font-style="{style}" '
            f'fill="{colour}" text-anchor="{anchor}">{escape(text)}</text>')


def _badge_width(label: str) -> float:
    return 12 + 6.5 * len(label)


def _badge(right: float, y: float, label: str, colour: str) -> str:
    w = _badge_width(label)
    return (f'<rect x="{right - w}" y="{y}" width="{w}" height="16" rx="8" fill="{colour}"/>'
            + _text(right - w / 2, y + 12, label, size=10, colour="#fff", anchor="middle", weight="bold"))


def _arrow(x0: float, y0: float, x1: float, y1: float) -> str:
    mid = (y0 + y1) / 2
    return (f'<path class="flow" d="M{x0},{y0} C{x0},{mid} {x1},{mid} {x1},{y1}" fill="none" stroke="#999" '
            f'stroke-width="1.4" marker-end="url(#arrow)"/>')


def _svg(width: float, height: float, parts: list[str], kind: str) -> Drawing:
    width, height = int(width), int(height)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="{kind}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="{FONT}">'
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>'
            f'<rect width="{width}" height="{height}" fill="#fff"/>')
    return Drawing(head + "".join(parts) + "</svg>", width, height)
