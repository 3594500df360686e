"""The site in a real browser: Playwright driving the system's headless Chromium (never a downloaded one).

`make test` installs Debian's chromium where apt is available; elsewhere this module skips, saying why.
Screenshots are kept in test-artifacts/ (git-ignored) for a human to look at.
"""

import threading
from pathlib import Path

import pytest

from graphs import view
from graphs.view import CHROMIUM_FLAGS, find_chromium
from tests.site_data import EPISODES, make_store

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium: `make test` installs Debian's chromium with apt when it can"
)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def site_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-site")
    make_store(root / "store.db")
    view.build_site(root / "store.db", root / "site")
    server = view.serve(root / "site", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=[a for a in CHROMIUM_FLAGS if a != "--headless"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    tab = context.new_page()
    tab.problems = []  # console errors and uncaught exceptions, checked by each test
    tab.on("console", lambda m: tab.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
    tab.on("requestfailed", lambda r: tab.problems.append(f"request failed: {r.url}"))
    yield tab
    context.close()


def visible_ids(page) -> list[str]:
    return page.eval_on_selector_all("#episodes tr.episode:not([hidden])", "rows => rows.map(r => r.dataset.id)")


def test_index_lists_and_filters_episodes(page, site_url):
    page.goto(f"{site_url}/index.html")
    assert visible_ids(page) == sorted(e[0] for e in EPISODES)
    page.select_option("#filter-culture", "JPN")
    assert visible_ids(page) == ["ep-jpn-done", "ep-jpn-invalid"]
    assert page.text_content("#shown") == "2 of 4 shown"
    assert page.url.endswith("?culture=JPN")
    page.select_option("#filter-status", "invalid")
    assert visible_ids(page) == ["ep-jpn-invalid"]
    page.select_option("#filter-culture", "")
    page.select_option("#filter-status", "")
    page.select_option("#filter-verdict", "dropped")
    assert visible_ids(page) == ["ep-chn-maxturns"]
    page.select_option("#filter-verdict", "")
    page.select_option("#filter-judge-label", "culture: aligned")
    assert visible_ids(page) == ["ep-chn-leave"]
    # A filtered address opens filtered.
    page.goto(f"{site_url}/index.html?model=puppet")
    assert page.input_value("#filter-model") == "puppet"
    assert visible_ids(page) == ["ep-chn-maxturns", "ep-jpn-done"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "site-index.png"), full_page=True)
    assert page.problems == []


def test_episode_page_shows_one_node_per_turn_with_its_intent(page, site_url):
    page.goto(f"{site_url}/index.html")
    page.click("a[href='episodes/ep-chn-leave.html']")
    page.wait_for_url("**/episodes/ep-chn-leave.html")
    expected = next(e for e in EPISODES if e[0] == "ep-chn-leave")
    nodes = page.locator("svg.conversation g.turn")
    assert nodes.count() == len(expected[5])
    for k, (label, cultural, _) in enumerate(expected[6]):
        node = nodes.nth(k)
        assert node.is_visible()
        assert node.locator("text.intent").text_content() == f"intent: {label}"
        assert ("cultural" in node.get_attribute("class").split()) == cultural
    assert page.locator("svg.conversation g.culture-callout").count() == 3
    assert page.locator("p.outcome .verdict").text_content() == "kept"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "site-episode.png"), full_page=True)
    assert page.problems == []


def test_topology_pictures_load(page, site_url):
    page.goto(f"{site_url}/graphs.html")
    images = page.locator("section.topology img")
    assert images.count() == len(view.TOPOLOGIES)
    for k in range(images.count()):
        assert images.nth(k).evaluate("img => img.complete && img.naturalWidth > 0")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "site-graphs.png"), full_page=True)
    assert page.problems == []
