"""The counter widget (examples/web) in a real headless Chromium: served from another origin,
it shows a page's figure and an Increment sent meanwhile; a page of an unlisted origin gets
no figure, and the page itself cannot send an Increment. Takes the README's screenshot."""

from __future__ import annotations

import filecmp
import functools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from proca_stats.server.app import StatsServer
from tests.support.proca_data import ProcaData
from tests.support.web import port_of, start_web

ROOT = Path(__file__).resolve().parent.parent
WIDGET = ROOT / "examples" / "web"
SCREENSHOT = WIDGET / "screenshot.png"
NODE_TOOLS = ROOT / "node_modules"
CHROMIUMS = ("/usr/bin/chromium-headless-shell", "/usr/bin/chromium")


def chromium() -> str:
    found = os.environ.get("PROCA_STATS_CHROMIUM") or next(
        (path for path in CHROMIUMS if Path(path).exists()), None
    )
    if found is None:
        pytest.fail("no Chromium: apt-get install -y chromium-headless-shell (.ci/run does)")
    return found


def tool(name: str) -> Path:
    path = WIDGET / "node_modules" / ".bin" / name
    if not path.exists():
        pytest.fail(f"{name} is missing: run npm ci --prefix examples/web")
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The widget built from its sources and served by a second HTTP server; its port."""
    folder = tmp_path_factory.mktemp("site")
    shutil.copy(WIDGET / "index.html", folder)
    bundle = f"--outfile={folder / 'dist' / 'widget.js'}"
    subprocess.run(
        [str(tool("esbuild")), "src/widget.js", "--bundle", "--format=esm", bundle],
        cwd=WIDGET,
        check=True,
        capture_output=True,
        timeout=120,
    )
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server.server_address[1]
        server.shutdown()


def test_the_committed_generated_code_matches_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [str(tool("buf")), "generate", "--output", str(tmp_path)],
        cwd=WIDGET,
        check=True,
        capture_output=True,
        timeout=120,
        env=os.environ | {"PATH": f"{WIDGET / 'node_modules' / '.bin'}:{os.environ['PATH']}"},
    )
    generated = tmp_path / "src" / "gen" / "proca" / "stats" / "v1" / "stats_pb.js"
    committed = WIDGET / "src" / "gen" / "proca" / "stats" / "v1" / "stats_pb.js"
    assert filecmp.cmp(generated, committed, shallow=False), "run: npm run generate"


def test_the_widget_shows_live_figures_to_listed_origins_only(
    site: int, db: ProcaData, start_server: Callable[..., StatsServer], database_url: str
) -> None:
    org = db.org()
    campaign = db.campaign(org)
    page = db.page(campaign, org, extra_supporters=12_340)
    for n in range(4):
        db.person(campaign, page, f"person-{n}".encode(), area="DE")
    allowed = f"http://127.0.0.1:{site}"
    server = start_web(start_server, database_url, cors_origins=(allowed,))
    url = f"http://127.0.0.1:{port_of(server)}"
    query = f"/index.html?server={url}&page={page}"
    increment = {"campaign_id": campaign, "org_id": org, "action_type": "signature"}
    config = {
        "chromium": chromium(),
        "allowed": allowed + query,
        "refused": f"http://localhost:{site}{query}",  # another origin: another host name
        "server": url,
        "increment": increment | {"new_supporter": True},
        "screenshot": str(SCREENSHOT),
    }
    done = subprocess.run(
        ["node", str(ROOT / "tests" / "node" / "browser.js"), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"NODE_PATH": str(NODE_TOOLS)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["shown"] == "12,344"
    assert seen["incrementStatus"] == 200
    assert seen["updated"] == "12,345"
    assert seen["updateMs"] < 2000, f"the page showed the Increment after {seen['updateMs']} ms"
    assert seen["pageIncrement"] == "refused: TypeError"  # CORS: the preflight was refused
    assert seen["strangerText"] == "…"  # no figure for an unlisted origin
    counters, _ = server.store.get(campaign)
    assert counters.supporters == 12_345  # the page's own Increment never arrived
