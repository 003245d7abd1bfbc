"""The Dagster UI as a person uses it: `dg dev` on 127.0.0.1 over a tiny project, driven in Debian's
chromium through Playwright (marker `browser`; .ci/run's second step). Screenshots go to test-artifacts/ui/.

- The good case, on a 150-user slice of the real embedded ML-1M: every stage of dvc.yaml is a node of the
  asset graph with its description; Materialize on raw_data + validated_features runs to success; the GX
  checks pass and the stage metrics are metadata on the asset page; a changed param marks exactly the
  affected asset "Unsynced"; `dvc repro` in a terminal brings it back in sync without a Dagster run.
- The bad case, `data.source: files` with an out-of-range rating: the run fails, the failed blocking check
  shows its message, and no downstream asset is materialised.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from support import TINY_SLICE, VENV_BIN, write_ml1m_dat
from ui_support import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, dagster_dev, make_project, sh

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
expect = playwright.expect

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: bash scripts/ci/system_deps.sh"),
]

RUN_TIMEOUT_MS = 45 * 60_000  # one run of two real stages: raw_data alone took 10 min at load 20 on 2 cores
UI_TIMEOUT_MS = 180_000  # a loaded 2-core machine serves the UI slowly
VIEWPORT = {"width": 1600, "height": 1000}
expect.set_options(timeout=UI_TIMEOUT_MS)  # expect() has its own default (5 s), apart from the page's


def stage_assets(root: Path) -> dict[str, tuple[str, str]]:
    """``{stage: (asset key, description)}`` from the project's dvc.yaml."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: (((body.get("meta") or {}).get("dagster") or {}).get("asset", name), body["desc"])
            for name, body in stages.items()}


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # fresh profile per launch
        yield b
        b.close()


class UI:
    """One browser page on one `dg dev`."""

    def __init__(self, browser, url: str):
        self.url = url
        self.page = page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(UI_TIMEOUT_MS)
        # Dagster greets a new instance with a newsletter dialog; a person clicks "Skip".
        page.add_locator_handler(page.get_by_text("Join the Dagster community"),
                                 lambda: page.get_by_role("button", name="Skip").click())

    def goto(self, path: str) -> None:
        self.page.goto(self.url + path)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    def node(self, key: str):
        """The asset's node in the lineage graph."""
        return self.page.locator("foreignObject").filter(has=self.page.get_by_text(key, exact=True))

    def materialize_in_graph(self, keys: list[str]) -> str:
        """Select the assets in the graph (click, shift-click) and press Materialize; returns the run's path."""
        self.goto("/asset-groups")
        self.node(keys[0]).click()
        for key in keys[1:]:
            self.node(key).click(modifiers=["Shift"])
        self.page.get_by_role("button", name=f"Materialize selected ({len(keys)})").click()
        expect(self.page.get_by_text("Launched run")).to_be_visible()
        self.goto("/runs")  # newest first; each server has run nothing else
        href = self.page.locator("a[href^='/runs/']").first.get_attribute("href")
        assert href and re.fullmatch(r"/runs/[0-9a-f-]{36}", href), href
        return href

    def until(self, path: str, locator, what: str, timeout_s: float = 300) -> None:
        """Reload ``path`` until ``locator(page)`` is visible (state that arrives from outside the page)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.goto(path)
            try:
                expect(locator(self.page).first).to_be_visible(timeout=30_000)
                return
            except AssertionError:
                assert time.monotonic() < deadline, f"{what}: not shown on {path} after {timeout_s:.0f} s"

    def wait_for_run(self, href: str, status: str) -> None:
        self.goto(href)
        expect(self.page.get_by_text(status, exact=True).first).to_be_visible(timeout=RUN_TIMEOUT_MS)


@pytest.fixture
def good(tmp_path, browser):  # one server per test: two at once would share 2 cores
    root, env = make_project(tmp_path / "project", **TINY_SLICE)
    with dagster_dev(root, env, ARTIFACTS / "dagster-good.log") as url:
        yield root, env, url


@pytest.fixture
def bad(tmp_path, browser):
    base = tmp_path / "project"
    source = write_ml1m_dat(base / "source")
    lines = (source / "ratings.dat").read_text().splitlines()
    u, i, _, t = lines[7].split("::")
    lines[7] = f"{u}::{i}::7::{t}"  # a rating outside 1-5: parses, and GX must catch it
    (source / "ratings.dat").write_text("\n".join(lines) + "\n")
    root, env = make_project(base, **{
        "data.source": "files", "data.format": "ml1m_dat", "data.paths": {"directory": "source"},
        "validation.fail_on_error": False,  # the stage writes; the blocking Dagster check stops downstream
        "validation.label_rate_bounds": [0.05, 0.95],
    })
    with dagster_dev(root, env, ARTIFACTS / "dagster-bad.log") as url:
        yield root, env, url


def test_asset_graph_materialize_checks_metadata_and_staleness(browser, good):
    root, env, url = good
    ui = UI(browser, url)
    assets = stage_assets(root)

    # The asset graph: every stage is a node; selecting it shows its dvc.yaml description.
    ui.goto("/asset-groups")
    for key, _ in assets.values():
        expect(ui.node(key)).to_have_count(1)
    ui.shot("01_asset_graph")
    for key, desc in assets.values():
        ui.page.locator(f"div[title='{key}']").first.click()  # the graph's asset list
        expect(ui.page.locator("body")).to_contain_text(desc.replace("`", ""))  # rendered as Markdown
    ui.shot("02_asset_selected")

    # Materialize raw_data and validated_features; the run succeeds.
    t0 = time.monotonic()
    href = ui.materialize_in_graph(["raw_data", "validated_features"])
    ui.wait_for_run(href, "Success")
    took = time.monotonic() - t0
    ui.shot("03_run_success")
    (ARTIFACTS / "timings.json").write_text(json.dumps({"ui_materialize_raw_data_validated_features_s": round(took, 1)}))
    print(f"UI materialisation of raw_data + validated_features: {took:.1f} s (click to Success)")
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"raw_data", "features"}

    # The stage metrics as metadata, and the passing GX checks, on the asset pages.
    metrics = json.loads((root / "metrics" / "raw_data.json").read_text())
    ui.goto("/assets/raw_data")
    expect(ui.page.get_by_text("raw_data.rows.users", exact=True).first).to_be_visible()
    expect(ui.page.locator("body")).to_contain_text(str(metrics["rows"]["interactions"]))
    ui.shot("04_raw_data_metadata")
    for key, check in (("raw_data", "gx_validation_raw"), ("validated_features", "gx_validation_features")):
        ui.goto(f"/assets/{key}?view=checks")
        expect(ui.page.get_by_text(check).first).to_be_visible()
        expect(ui.page.get_by_text("Passed", exact=True).first).to_be_visible()
        expect(ui.page.locator("body")).to_contain_text(re.compile(r"all \d+ expectations passed"))
        ui.shot(f"05_{key}_checks")

    # One state behind both front doors: a param of the features stage changes -> only it is Unsynced.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["features"]["history_len"] = params["features"]["history_len"] - 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ui.goto("/asset-groups")
    ui.page.get_by_role("button", name="Reload definitions").click()
    unsynced = lambda page: page.get_by_text(re.compile(r"^Unsynced"))
    ui.until("/assets/validated_features", unsynced, "validated_features Unsynced after the param change")
    ui.shot("06_unsynced_after_param_change")
    ui.goto("/assets/raw_data")
    expect(ui.page.get_by_text("raw_data.rows.users", exact=True).first).to_be_visible()  # the page has loaded
    expect(unsynced(ui.page)).to_have_count(0)

    # `dvc repro` in a terminal: the dvc_lock_sync sensor reports it; the UI shows it, nothing reran here.
    sh([str(VENV_BIN / "dvc"), "repro", "features"], root, env)
    ui.until("/assets/validated_features?view=events", lambda page: page.get_by_text("Produced outside Dagster"),
             "the dvc_lock_sync sensor's report of the dvc repro")
    expect(ui.page.locator("body")).to_contain_text("dvc_synced_from")
    ui.shot("07_synced_from_dvc_repro")
    ui.goto("/assets/validated_features")
    expect(ui.page.get_by_text("dvc_synced_from", exact=True).first).to_be_visible()  # the synced state, loaded
    expect(unsynced(ui.page)).to_have_count(0)
    ui.goto("/asset-groups")
    expect(ui.node("bento")).to_have_count(1)
    time.sleep(2)  # let the graph settle for the screenshot the README shows
    ui.shot("08_asset_graph_after_runs")
    ui.page.close()


def test_bad_data_fails_the_blocking_check_and_stops_downstream(browser, bad):
    root, _, url = bad
    ui = UI(browser, url)
    href = ui.materialize_in_graph(["raw_data", "validated_features"])
    ui.wait_for_run(href, "Failure")
    ui.shot("bad_01_run_failure")

    ui.goto("/assets/raw_data?view=checks")
    expect(ui.page.get_by_text("gx_validation_raw").first).to_be_visible()
    expect(ui.page.get_by_text("Failed", exact=True).first).to_be_visible()
    expect(ui.page.locator("body")).to_contain_text(
        re.compile(r"\d+ of \d+ expectations failed: interactions\.rating expect_column_values_to_be_between"))
    ui.shot("bad_02_failed_check")

    # The blocked downstream asset as its page shows it: this run planned it, failed and did not materialise it
    # (the Events tab says so, naming the run, and lists no event at all). The overview tab's "Failed in" line is
    # not shown reliably by Dagster 1.13.27 for a step that never started (two CI runs), so it is not checked.
    # The asset's state is fetched once per page load: reload.
    run_link = lambda page: page.get_by_role("link", name=href.rsplit("/", 1)[-1][:8], exact=True)
    ui.until("/assets/validated_features?view=events",
             lambda page: page.get_by_text("failed, and did not materialize this asset."),
             "validated_features: the run that did not materialise it")
    expect(run_link(ui.page).first).to_be_visible()
    expect(ui.page.get_by_text("No events found", exact=True).first).to_be_visible()
    ui.shot("bad_03_downstream_events")
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == {"raw_data"}
    assert not (root / "data" / "features").exists()
    ui.page.close()
