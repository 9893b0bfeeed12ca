"""Size and load time of a large `cm2 view` report.

Builds a run folder of N episodes (default 10,000: replay rollouts of the bundled dialogues, copied with new group
indices and rewards spread over [0, 1]), writes its report, and opens it in headless Chromium (Debian's
`chromium`, through Playwright): time until the page is ready (summary, first page of the list), then until an
episode from the last chunk is shown. Prints one line per figure (or why the browser ones were skipped) and, with --json, a JSON line.

    .venv/bin/python benchmarks/perf/view_report.py [--episodes 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.headless_chromium import MISSING, chromium_path, launch  # noqa: E402


def make_run(folder: Path, episodes: int) -> None:
    from agents import ReplayAgent
    from agents.rollout import run_rollouts
    from cm2_env.data import load_dialogues

    dialogues = load_dialogues("tooltalk")
    base = folder / "base"
    run_rollouts(dialogues, ReplayAgent(dialogues), out_dir=base, progress=False)
    records = [json.loads(line) for line in (base / "trajectories.jsonl").read_text().splitlines()]
    out = folder / "run"
    out.mkdir()
    (out / "run.json").write_text((base / "run.json").read_text())
    with (out / "trajectories.jsonl").open("w") as handle:
        for i in range(episodes):
            record = dict(records[i % len(records)], group_index=i // len(records), R=(i * 7919 % 1000) / 1000)
            handle.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from cm2_env.view import build_report

    chromium = chromium_path()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_run(folder, args.episodes)
        jsonl_mb = (folder / "run" / "trajectories.jsonl").stat().st_size / 1e6
        started = time.perf_counter()
        stats = build_report(folder / "run", folder / "report.html")
        build_s = time.perf_counter() - started
        result = {"episodes": stats["episodes"], "trajectories_mb": round(jsonl_mb, 1),
                  "report_mb": round(stats["bytes"] / 1e6, 2), "build_s": round(build_s, 2)}
        if chromium:
            with sync_playwright() as p:
                browser = launch(p, chromium)
                page = browser.new_page()
                started = time.perf_counter()
                page.goto((folder / "report.html").as_uri())
                page.wait_for_selector("body[data-ready='1']", timeout=600_000)
                result["load_s"] = round(time.perf_counter() - started, 2)
                page.click("#episodes th[data-k='0']")  # sort by number, descending on the second click
                page.click("#episodes th[data-k='0']")
                started = time.perf_counter()
                page.click("tr.row >> nth=0")
                page.wait_for_selector(".episode", timeout=600_000)
                result["open_last_episode_s"] = round(time.perf_counter() - started, 2)
                browser.close()
        else:
            print(f"load and click times not measured: {MISSING}")
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
