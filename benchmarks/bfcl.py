"""BFCL v4 (``bfcl-eval==2026.3.23``) through its official multi-turn loop and checker, with any policy.

Our side of the adapter: options, the run directory, resuming, the subprocess, and the paper-style report. It
never imports ``bfcl_eval`` and never evaluates model output: BFCL's checker runs call strings through Python's ``eval``, so all of
BFCL runs in ``python -m benchmarks.bfcl_worker`` (``bfcl_worker.py``), with ``BFCL_PROJECT_ROOT`` set to the run
directory so nothing is written into site-packages.

Run directory (``--out``)::

    run.json                 what was run (policy, mode, BFCL name, bfcl-eval version); checked on resume
    result/<name>/...        BFCL's result files, one JSON line per entry (appended as entries finish)
    score/<name>/...         BFCL's score files (first line: accuracy, correct_count, total_count)
    bfcl_results.md / .json  the Table-3-style report, stamped with bfcl-eval version, policy and date
    worker.log               everything BFCL printed

Running again with the same ``--out`` resumes: entries with a result are kept, entries that ended in an
inference error and entries not yet run are run, and every selected entry is re-scored.
Scores are percentages (0-100). Multi-Turn overall and Web Search overall are unweighted means of their
subcategories, as in BFCL's leaderboard and the CM2 paper's Table 3.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata, util
from pathlib import Path
from typing import Any, Callable

from benchmarks.runs import check_run_dir, utc_now, write_report
from cm2_env.specs import Spec, parse

BFCL_EVAL_VERSION = "2026.3.23"
MULTI_TURN_CATEGORIES = (
    "multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context",
)
WEB_SEARCH_CATEGORIES = ("web_search_base", "web_search_no_snippet")
CATEGORY_GROUPS = {
    "all": MULTI_TURN_CATEGORIES + WEB_SEARCH_CATEGORIES,
    "multi_turn": MULTI_TURN_CATEGORIES,
    "web_search": WEB_SEARCH_CATEGORIES,
}
# (column header, report key) in the order of the CM2 paper's Table 3
TABLE_COLUMNS = (
    ("MT Base", "multi_turn_base"), ("MT Miss Func", "multi_turn_miss_func"),
    ("MT Miss Param", "multi_turn_miss_param"), ("MT Long Ctx", "multi_turn_long_context"),
    ("MT Overall", "multi_turn_overall"),
    ("WS Base", "web_search_base"), ("WS No Snippet", "web_search_no_snippet"), ("WS Overall", "web_search_overall"),
)
WEB_SEARCH_PACKAGES = {"serpapi": "google-search-results", "bs4": "beautifulsoup4", "html2text": "html2text",
                       "requests": "requests"}
BUILTIN_POLICIES = ("oracle", "noop")
#: How the policy answers: structured tool calls (BFCL's -FC models) or calls written as Python text.
MODES = ("fc", "prompting")


class BfclError(RuntimeError):
    """A BFCL run could not be set up or did not finish; the message says what to do."""


def parse_policy(text: str) -> Spec:
    """A ``--policy`` in the project's spec grammar (``cm2_env.specs``, role ``bench``): ``oracle``, ``noop``, an
    endpoint spec (``openai:http://host/v1#model``), ``hf:PATH`` or ``module:attribute``. Raises ``SpecError``."""
    return parse(text, "bench")


def policy_label(spec: Spec) -> str:
    """A short, file-name-safe name for the policy (used in BFCL's model name)."""
    if spec.kind in BUILTIN_POLICIES:
        return spec.kind
    if spec.kind == "endpoint":
        tail = spec.value.rsplit("#", 1)[-1].split("?", 1)[0]
    elif spec.kind == "python":
        tail = spec.value.rsplit(":", 1)[-1]
    else:
        tail = spec.value
    tail = tail.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9.-]+", "-", tail).strip("-.") or spec.kind


def parse_categories(text: str) -> list[str]:
    """Comma-separated BFCL category names or groups (all, multi_turn, web_search), deduplicated, in order."""
    known = CATEGORY_GROUPS["all"]
    selected: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        names = CATEGORY_GROUPS.get(item, (item,) if item in known else None)
        if names is None:
            choices = ", ".join((*CATEGORY_GROUPS, *known))
            raise BfclError(f"--categories: unknown category {item!r}; choose from {choices}")
        selected.extend(name for name in names if name not in selected)
    if not selected:
        raise BfclError("--categories is empty")
    return selected


def web_search_unavailable(environ: dict[str, str] | None = None) -> str | None:
    """Why web search cannot run live here, or ``None`` when it can (it needs SerpAPI and the internet)."""
    environ = os.environ if environ is None else environ
    missing = [package for module, package in WEB_SEARCH_PACKAGES.items() if util.find_spec(module) is None]
    reasons = [] if environ.get("SERPAPI_API_KEY") else ["no SERPAPI_API_KEY in the environment"]
    if missing:
        reasons.append(f"packages not installed: {' '.join(missing)}")
    if not reasons:
        return None
    return ("web_search skipped: BFCL's web-search backend queries Google live through SerpAPI ("
            + "; ".join(reasons) + "). Set SERPAPI_API_KEY and install the packages to run it.")


@dataclass
class BfclOptions:
    """One BFCL run. ``limit``: first N entries of each category (None: all). ``name``: BFCL's model name
    (default ``cm2-<policy>`` plus ``-FC`` in function-calling mode). ``clear_instance_cache=False`` only to
    reproduce BFCL's backend-instance-cache pitfall (docs/benchmarks.md)."""

    policy: str
    out: Path
    categories: list[str] = field(default_factory=lambda: list(CATEGORY_GROUPS["all"]))
    limit: int | None = None
    concurrency: int = 8
    mode: str = "fc"
    temperature: float = 0.001
    name: str | None = None
    clear_instance_cache: bool = True

    def model_name(self) -> str:
        if self.name:
            return self.name
        return f"cm2-{policy_label(parse_policy(self.policy))}" + ("-FC" if self.mode == "fc" else "")


@dataclass
class BfclReport:
    """Scores of one run in percent; ``categories`` maps a category to accuracy, correct and total."""

    benchmark: str
    bfcl_eval_version: str
    policy: str
    mode: str
    model_name: str
    date: str
    limit: int | None
    run_dir: str
    categories: dict[str, dict[str, Any]]
    skipped: dict[str, str]
    elapsed_s: float

    def scores(self) -> dict[str, float | None]:
        """The Table-3 keys (``multi_turn_overall`` etc.) in percent; ``None`` where nothing was scored."""
        scores = {key: (self.categories[key]["accuracy"] if key in self.categories else None)
                  for _, key in TABLE_COLUMNS if not key.endswith("_overall")}
        for group, names in (("multi_turn", MULTI_TURN_CATEGORIES), ("web_search", WEB_SEARCH_CATEGORIES)):
            present = [scores[name] for name in names if scores[name] is not None]
            scores[f"{group}_overall"] = round(statistics.fmean(present), 2) if present else None
        return scores

    def to_json(self) -> dict[str, Any]:
        scores = self.scores()
        complete = {group: all(scores[name] is not None for name in names)
                    for group, names in (("multi_turn", MULTI_TURN_CATEGORIES), ("web_search", WEB_SEARCH_CATEGORIES))}
        return {**scores, "multi_turn_overall_complete": complete["multi_turn"],
                "web_search_overall_complete": complete["web_search"], **asdict(self)}

    def markdown(self) -> str:
        """The paper's Table 3 layout (MT = Multi-Turn, WS = Web Search), with the stamp and the counts."""
        scores = self.scores()
        cells = ["n/a" if scores[key] is None else f"{scores[key]:.2f}" for _, key in TABLE_COLUMNS]
        counts = ", ".join(f"{name} {row['correct']}/{row['total']}" for name, row in self.categories.items())
        lines = [
            f"BFCL v4 (bfcl-eval {self.bfcl_eval_version}) · policy `{self.policy}` · mode {self.mode} · "
            f"{self.date} · " + (f"first {self.limit} entries per category" if self.limit else "all entries"),
            "",
            "| Policy | " + " | ".join(header for header, _ in TABLE_COLUMNS) + " |",
            "|---|" + "---:|" * len(TABLE_COLUMNS),
            f"| {self.policy} | " + " | ".join(cells) + " |",
            "",
            "Accuracy in percent. MT = Multi-Turn, WS = Web Search; Overall = unweighted mean of the subcategories"
            " scored. Correct/total: " + (counts or "none"),
        ]
        lines.extend(f"- {reason}" for reason in dict.fromkeys(self.skipped.values()))
        return "\n".join(lines) + "\n"


ProgressCallback = Callable[[dict[str, Any]], None]


def run_bfcl(options: BfclOptions, on_event: ProgressCallback | None = None) -> BfclReport:
    """Run one policy on BFCL v4 and write the report into ``options.out``; resumes an earlier run there."""
    return run_bfcl_sequence([options], on_event)[0]


def run_bfcl_sequence(runs: list[BfclOptions], on_event: ProgressCallback | None = None) -> list[BfclReport]:
    """Run several BFCL runs one after another in ONE worker process (e.g. policies or checkpoints in turn).

    This is where BFCL's backend-instance cache would leak state from one run into the next under the same
    model name; the worker clears it between runs.
    """
    version = installed_bfcl_version()
    plans = [_plan(options) for options in runs]
    active = [(options, categories) for options, categories, _ in plans if categories]
    elapsed = 0.0
    if active:
        first_out = active[0][0].out
        job = {"log": str(first_out / "worker.log"),
               "runs": [_worker_run(options, categories) for options, categories in active]}
        job_path = first_out / "job.json"
        job_path.write_text(json.dumps(job, indent=2))
        started = time.perf_counter()
        _spawn_worker(job_path, first_out, on_event)
        elapsed = time.perf_counter() - started
    reports = []
    for options, categories, skipped in plans:
        report = BfclReport(
            benchmark="BFCL v4", bfcl_eval_version=version, policy=options.policy, mode=options.mode,
            model_name=options.model_name(), date=utc_now(),
            limit=options.limit, run_dir=str(options.out),
            categories=read_scores(options.out / "score", options.model_name(), categories),
            skipped=skipped, elapsed_s=round(elapsed, 2),
        )
        write_report(options.out, "bfcl_results", report.to_json(), report.markdown())
        reports.append(report)
    return reports


def installed_bfcl_version() -> str:
    try:
        return metadata.version("bfcl-eval")
    except metadata.PackageNotFoundError:
        raise BfclError(
            f"bfcl-eval is not installed: pip install --no-deps bfcl-eval=={BFCL_EVAL_VERSION} "
            "and pip install 'cm2[bfcl]' (the minimal dependency set, docs/benchmarks.md)"
        ) from None


def _plan(options: BfclOptions) -> tuple[BfclOptions, list[str], dict[str, str]]:
    """Validate ``options``, prepare the run directory; return the categories to run and those skipped."""
    if options.mode not in MODES:
        raise BfclError(f"--mode must be {' or '.join(MODES)}, not {options.mode!r}")
    if options.limit is not None and options.limit < 1:
        raise BfclError("--limit must be at least 1")
    if options.concurrency < 1:
        raise BfclError("--concurrency must be at least 1")
    parse_policy(options.policy)
    reason = web_search_unavailable() if set(options.categories) & set(WEB_SEARCH_CATEGORIES) else None
    skipped = {name: reason for name in options.categories if reason and name in WEB_SEARCH_CATEGORIES}
    _check_run_dir(options)
    return options, [name for name in options.categories if name not in skipped], skipped


def _check_run_dir(options: BfclOptions) -> None:
    check_run_dir(options.out, {"policy": options.policy, "mode": options.mode, "model_name": options.model_name(),
                                "bfcl_eval_version": installed_bfcl_version()}, BfclError)


def _worker_run(options: BfclOptions, categories: list[str]) -> dict[str, Any]:
    return {
        "name": options.model_name(), "policy": parse_policy(options.policy).text,
        "mode": options.mode, "categories": categories, "limit": options.limit,
        "concurrency": options.concurrency, "temperature": options.temperature,
        "result_dir": str(options.out.resolve() / "result"), "score_dir": str(options.out.resolve() / "score"),
        "clear_instance_cache": options.clear_instance_cache,
    }


def _spawn_worker(job_path: Path, project_root: Path, on_event: ProgressCallback | None) -> None:
    """Run the worker; relay its JSON-line events; raise ``BfclError`` with the log's tail if it fails."""
    repo_root = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join(p for p in (repo_root, os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "BFCL_PROJECT_ROOT": str(project_root.resolve()), "PYTHONPATH": python_path}
    log_path = project_root / "worker.log"
    failure = None
    with open(log_path, "a") as log:
        process = subprocess.Popen([sys.executable, "-m", "benchmarks.bfcl_worker", str(job_path)],
                                   stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "failed":
                failure = event.get("error")
            if on_event is not None:
                on_event(event)
        returncode = process.wait()
    if returncode != 0 or failure:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise BfclError(f"the BFCL worker failed ({failure or f'exit code {returncode}'}); see {log_path}:\n{tail}")


def read_scores(score_dir: Path, model_name: str, categories: list[str]) -> dict[str, dict[str, Any]]:
    """Read the header line of BFCL's score files: accuracy (percent), correct and total per category."""
    scores = {}
    for category in categories:
        group = "multi_turn" if category.startswith("multi_turn") else "agentic"
        path = score_dir / model_name.replace("/", "_") / group / f"BFCL_v4_{category}_score.json"
        if not path.exists():
            raise BfclError(f"{path} is missing: the worker did not score {category}; see worker.log")
        with open(path) as handle:
            header = json.loads(handle.readline())
        scores[category] = {"accuracy": round(100.0 * header["accuracy"], 2),
                            "correct": header["correct_count"], "total": header["total_count"]}
    return scores
