"""The process view in headless Chromium shows security policy matches on their processes."""

from __future__ import annotations

import time

from otelbpf.ui import UiServer
from tests.e2e.test_ui import ARTIFACTS, chromium
from tests.unit.test_store_security import fill


def test_process_view_shows_security_events(tmp_path):
    t0 = time.time_ns()
    store = fill(tmp_path / "s.duckdb", t0)
    ui = UiServer(store).start()
    try:
        url = f"{ui.base_url}/processes?token={ui.token}"
        ARTIFACTS.mkdir(exist_ok=True)
        chromium(url, tmp_path / "profile", ARTIFACTS / "ui-processes-security.png")
        dom = chromium(url, tmp_path / "profile")
    finally:
        ui.stop()
        store.close()
    table = dom[dom.index('id="security-table"'):]
    assert "/etc/shadow" in table and "/etc/sudoers" in table and "203.0.113.9:443" in table
    # On the tree: the badge hangs on the process that matched, with its count and policies.
    node = dom[dom.index('data-pid="40001"'):]
    assert node.index('data-security="2"') < node.index("</li>") and "sensitive-files" in node[:600]
    other = dom[dom.index('data-pid="40002"'):]
    assert other.index('data-security="1"') < other.index("</li>") and "outbound-public" in other[:600]
    quiet = dom[dom.index('data-pid="40000"'):]
    assert "data-security" not in quiet[:quiet.index("</li>")]
