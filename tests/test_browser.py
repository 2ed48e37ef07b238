"""The Dagster webserver on loopback, in headless Chromium: every asset appears on the asset graph."""

import shutil
import subprocess
import sys
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import child_env, free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture
def webserver(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = child_env(DAGSTER_HOME=str(tmp_path / "dagster"), LOOPWISE_DATA_DIR=str(tmp_path / "data"))
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    log = open(tmp_path / "webserver.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1",
                             "-p", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/server_info", proc, "the Dagster webserver", seconds=120)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_every_asset_appears_on_the_asset_graph(webserver: str, artifacts: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): the browser test cannot run")
    from playwright.sync_api import sync_playwright

    from definitions import defs

    graph = defs.resolve_asset_graph()
    assets = sorted(k.to_user_string() for k in graph.get_all_asset_keys())
    # The graph labels a node with its key's last part (`ticket_escalation/training_set` shows as `training_set`
    # inside its group's box), so each label must appear once per asset that carries it.
    labels = Counter(k.path[-1] for k in graph.get_all_asset_keys())
    groups = sorted({graph.get(k).group_name for k in graph.get_all_asset_keys()})
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # Large enough that the fitted graph shows full nodes (zoomed out, Dagster abbreviates long names).
        page = browser.new_page(viewport={"width": 3840, "height": 2400})
        # The asset graph with every group expanded, as a user gets it by expanding each group node
        # (the page keeps that state in its URL; clicking group by group re-lays the graph out of view).
        expanded = ",".join(f"global@global:{g}" for g in groups)
        page.goto(f"{webserver}/asset-groups?expanded={urllib.parse.quote(expanded)}")
        skip = page.get_by_role("button", name="Skip")  # Dagster's first-visit community dialog
        try:
            skip.click(timeout=8000)
        except Exception:
            pass
        page.get_by_text(next(iter(labels)), exact=True).first.wait_for(timeout=30000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(artifacts / "asset_graph.png"), full_page=True)
        missing = {label: n for label, n in labels.items() if page.get_by_text(label, exact=True).count() < n}
        missing_groups = [g for g in groups if page.get_by_text(g, exact=True).count() == 0]
        browser.close()
    assert missing == {}, f"assets not on the graph page (label: how many expected): {missing}"
    assert missing_groups == []
    assert len(assets) == sum(labels.values())
