"""The Figure 3 study's machinery (benchmarks/studies/figure3.py) on its --quick grid: it runs and writes its
outputs. No finding is asserted: the quick grid's numbers mean nothing."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_the_quick_grid_runs_every_configuration_and_writes_results_table_and_figure(tmp_path):
    from benchmarks.studies.figure3 import grid, main

    assert main(["--out", str(tmp_path), "--quick"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == {run.name for run in grid([0], quick=True)}
    for run in results["runs"].values():
        assert set(run["validation"]) == {"0", "1", "2"}  # before training, then every step (interval 1)
    assert (tmp_path / "figure3.png").stat().st_size > 1000
    assert (tmp_path / "table.md").read_text().count("\n") == 2 + len(results["runs"])
    assert set(results["run_seconds"]) == set(results["runs"]) and all(results["run_seconds"].values())
    assert main(["--out", str(tmp_path), "--quick"]) == 0  # resumable: a second call finds every run done
    again = json.loads((tmp_path / "results.json").read_text())
    assert {s["status"] for s in again["statuses"]} == {"done before"}
    # the folder's wall time and each run's seconds are kept across invocations, not replaced by the second's
    assert again["wall_s"] >= results["wall_s"] and again["run_seconds"] == results["run_seconds"]
