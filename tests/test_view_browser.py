"""`cm2 view` reports in a real headless Chromium (Debian's `chromium`, driven by Playwright): the DOM shows the
episodes, the verdicts on their actions and the curves; clicking opens an episode and compares two; no script
payload from a transcript runs. Screenshots are kept under .artifacts/view/ (or $CM2_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.headless_chromium import MISSING, chromium_path, launch

CHROMIUM = chromium_path()
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=MISSING)
ARTIFACTS = Path(os.environ.get("CM2_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / ".artifacts") / "view"


@pytest.fixture(scope="module")
def replay_report(tmp_path_factory):
    """A replay rollout with script payloads in a tool result and a reply, and its report."""
    from cm2_env.view import build_report
    from tests.support.view_runs import hostile_run

    run = hostile_run(tmp_path_factory.mktemp("replay"))
    build_report(run, run / "report.html")
    return run


@pytest.fixture(scope="module")
def training_report(tmp_path_factory):
    """Two GRPO steps of a micro model logging every step's episodes (2 x 2), and the report."""
    from cm2_env.data import load_dialogues
    from cm2_env.view import build_report
    from tests.support.tiny_models import micro_config, micro_model_dir
    from train.grpo import train

    folder = tmp_path_factory.mktemp("training")
    config = micro_config(micro_model_dir(folder / "micro", seed=0), folder / "run", steps=2, group_size=2,
                          prompts_per_step=1, max_new_tokens=8, rollout_log_interval=1, checkpoint_interval=0)
    train(config, dialogues=load_dialogues("tooltalk")[:1])
    build_report(folder / "run", folder / "run" / "report.html")
    return folder / "run"


@pytest.fixture(scope="module")
def browser(replay_report, training_report):
    # Playwright's sync API runs an event loop on this thread: the runs above (asyncio) are made first.
    with playwright_api.sync_playwright() as p:
        chromium = launch(p, CHROMIUM)
        yield chromium
        chromium.close()


def _open(browser, report):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(report.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    return page, errors


def test_a_replay_report_shows_verdicts_on_their_actions_and_runs_no_payload(browser, replay_report):
    from tests.support.view_runs import PAYLOADS

    run = replay_report
    report = run / "report.html"
    record = json.loads((run / "trajectories.jsonl").read_text().splitlines()[0])
    page, errors = _open(browser, report)
    assert page.inner_text("#page") == "page 1 / 1 (1 episodes)"
    assert page.locator("tr.row").count() == 1
    page.click("tr.row")
    page.wait_for_selector(".episode")
    # every passed item's badge sits in the action its verdict names, in the right turn
    for t, verdicts in enumerate(record["verdicts"]):
        for item_id, verdict in verdicts.items():
            badge = page.locator(f".turn[data-turn='{t}'] .action[data-action='{verdict['first_action']}'] "
                                 f".item[data-item='{item_id}']")
            assert badge.count() == (1 if verdict["passed"] else 0), (t, item_id)
    text = page.inner_text(".episode")
    assert PAYLOADS[0] in text.replace("\\", "") and "onerror" in text  # shown as text...
    assert page.evaluate("window.__pwned") is None  # ...and never run
    assert page.locator(".episode img, .episode script").count() == 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "replay-episode.png"))
    assert errors == []
    page.close()


def test_a_training_report_draws_its_curves_and_compares_two_group_members(browser, training_report):
    report = training_report / "report.html"
    page, errors = _open(browser, report)
    assert page.locator("#curves svg").count() == 1
    assert page.locator("#curves svg path").count() >= 4
    assert "training steps" in page.inner_text("#summary-list")
    assert page.inner_text("#page") == "page 1 / 1 (4 episodes)"
    boxes = page.locator("tr.row input[type=checkbox]")
    boxes.nth(0).check()
    page.locator("tr.row input[type=checkbox]").nth(1).check()
    page.click("#compare-button")
    page.wait_for_selector("#compare-view")
    assert page.locator("#compare-view .episode").count() == 2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "training-compare.png"), full_page=False)
    assert errors == []
    page.close()
