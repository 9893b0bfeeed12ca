"""ToolSandbox (apple/ToolSandbox) through its own scenario loop and evaluation: ``cm2 bench toolsandbox``.

ToolSandbox pins old libraries (openai 1.17, transformers 4.41, polars 0.20, ...), so it lives in its own Python
environment, which the user installs (docs/benchmarks.md) and names with ``--python``. The policy reaches it over
HTTP:

1. ``--policy``: an endpoint spec is used as it is; ``hf:PATH`` and ``MODULE:ATTRIBUTE`` agents are served by
   ``cm2 serve`` (:func:`agents.serve.serve_in_thread`) for the run; ``noop`` is ToolSandbox's own unhelpful agent.
2. ``benchmarks/toolsandbox_runner.py`` runs inside ``--python``: it lists the scenarios (``list``) and plays the
   selected ones (``run``) with ToolSandbox's OpenAI agent and user roles pointed at our endpoints, through
   ``Scenario.play_and_evaluate``: milestone similarity, or 0 when a minefield is hit.
3. Here: the selection, the run directory (``results.jsonl``, one line per finished scenario: resumable), and the
   report in the layout of the CM2 paper's ToolSandbox columns, stamped with ToolSandbox's commit.

Selection: ``--scenarios`` and ``--categories`` filter, ``--limit`` keeps the first N. Scenarios whose base
scenario allows a live RapidAPI tool are skipped without ``RAPID_API_KEY`` (or with ``--skip-rapidapi``); with
the scripted user (``--user scripted``, which ends the conversation as soon as the agent answers) scenarios
tagged MULTIPLE_USER_TURN are skipped too. Skipped scenarios are listed in the report, never scored 0.
Aggregation follows ToolSandbox's own ``get_category_summary``: the mean similarity per category, where a
scrambled variant does not also count as 3-DT, and the overall mean over every scenario played.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from benchmarks.runs import check_run_dir, utc_now, write_report
from cm2_env.errors import SpecError

BENCHMARK = "ToolSandbox"
RUNNER = Path(__file__).with_name("toolsandbox_runner.py")
DOCS = "docs/benchmarks.md (section ToolSandbox)"
#: The paper's ToolSandbox columns: (column, ToolSandbox category).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("STC", "SINGLE_TOOL_CALL"), ("MTC", "MULTIPLE_TOOL_CALL"), ("SUT", "SINGLE_USER_TURN"),
    ("MUT", "MULTIPLE_USER_TURN"), ("SD", "STATE_DEPENDENCY"), ("C", "CANONICALIZATION"),
    ("II", "INSUFFICIENT_INFORMATION"), ("0-DT", "NO_DISTRACTION_TOOLS"), ("3-DT", "THREE_DISTRACTION_TOOLS"),
    ("10-DT", "TEN_DISTRACTION_TOOLS"), ("AT", "ALL_TOOLS_AVAILABLE"), ("TNS", "TOOL_NAME_SCRAMBLED"),
    ("TDS", "TOOL_DESCRIPTION_SCRAMBLED"), ("ADS", "ARG_DESCRIPTION_SCRAMBLED"), ("ATS", "ARG_TYPE_SCRAMBLED"),
)
SCRAMBLED = {"TOOL_NAME_SCRAMBLED", "TOOL_DESCRIPTION_SCRAMBLED", "ARG_DESCRIPTION_SCRAMBLED", "ARG_TYPE_SCRAMBLED",
             "ARG_NAME_SCRAMBLED"}
ProgressCallback = Callable[[dict[str, Any]], None]


class ToolSandboxError(RuntimeError):
    """The benchmark cannot run as asked (one line, said to the user)."""


def check_python(python: str | None) -> str:
    """The interpreter ``--python`` names, checked: it runs and imports ``tool_sandbox``. Raises
    :class:`ToolSandboxError` with one line that says what is missing and where the setup is described."""
    if not python:
        raise ToolSandboxError(f"ToolSandbox needs --python: the interpreter of an environment where ToolSandbox "
                               f"is installed (it cannot live beside cm2); see {DOCS}")
    try:
        probe = subprocess.run([python, "-c", "import tool_sandbox"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolSandboxError(f"--python {python}: cannot run it ({exc}); see {DOCS}") from None
    if probe.returncode != 0:
        raise ToolSandboxError(f"--python {python}: tool_sandbox is not importable there; install ToolSandbox into "
                               f"that environment, see {DOCS}")
    return python


@dataclass
class ToolSandboxOptions:
    """One run. ``policy``/``user``: spec strings (``user``: ``scripted`` or an endpoint); ``python``: the
    ToolSandbox interpreter; ``categories``: column names (``STC``...) or ToolSandbox category names;
    ``skip_rapidapi``: None means "skip unless RAPID_API_KEY is set"."""

    policy: str
    user: str
    python: str
    out: Path
    categories: list[str] | None = None
    scenarios: list[str] | None = None
    limit: int | None = None
    concurrency: int = 4
    skip_rapidapi: bool | None = None
    temperature: float = 0.0

    def check(self) -> None:
        from cm2_env.specs import parse

        policy = parse(self.policy, "bench")
        if policy.kind == "oracle":
            raise SpecError("ToolSandbox has no ground-truth calls to replay: --policy oracle is not available. "
                            "Fix: noop (ToolSandbox's unhelpful agent), an endpoint, hf:PATH or MODULE:ATTRIBUTE")
        if self.user != "scripted" and parse(self.user, "simulator").kind != "endpoint":
            raise SpecError(f"--user {self.user!r}: give 'scripted' or an endpoint spec (openai:URL#model) for "
                            "ToolSandbox's LLM user simulator")
        for name in self.categories or []:
            category_name(name)

    @property
    def skipping_rapidapi(self) -> bool:
        return not os.environ.get("RAPID_API_KEY") if self.skip_rapidapi is None else self.skip_rapidapi

    def manifest(self, git_sha: str | None) -> dict[str, Any]:
        from cm2_env.specs import parse

        sampled_here = parse(self.policy, "bench").kind == "hf"  # other policies sample as they are configured
        return {"benchmark": BENCHMARK, "toolsandbox_commit": git_sha, "policy": self.policy, "user": self.user,
                "categories": self.categories, "scenarios": self.scenarios, "limit": self.limit,
                "skip_rapidapi": self.skipping_rapidapi, "temperature": self.temperature if sampled_here else None}


def category_name(name: str) -> str:
    """A column (``STC``) or ToolSandbox category (``SINGLE_TOOL_CALL``, any case) as the category name."""
    columns = {column.lower(): category for column, category in COLUMNS}
    key = name.strip().lower()
    if key in columns:
        return columns[key]
    categories = {category.lower(): category for _, category in COLUMNS}
    if key in categories:
        return categories[key]
    raise SpecError(f"unknown ToolSandbox category {name!r}: use one of "
                    f"{', '.join(column for column, _ in COLUMNS)} or their ToolSandbox names")


def select(listing: list[dict[str, Any]], options: ToolSandboxOptions) -> tuple[list[str], dict[str, str]]:
    """``(scenarios to play, {skipped scenario: reason})`` from the runner's listing, in listing order."""
    rows = listing
    if options.scenarios:
        known = {row["name"] for row in listing}
        missing = [name for name in options.scenarios if name not in known]
        if missing:
            raise ToolSandboxError(f"unknown scenario(s) {missing[:5]}: names are ToolSandbox's, e.g. "
                                   f"{listing[0]['name'] if listing else 'wifi_off'}")
        wanted = set(options.scenarios)
        rows = [row for row in rows if row["name"] in wanted]
    if options.categories:
        wanted_categories = {category_name(name) for name in options.categories}
        rows = [row for row in rows if wanted_categories & set(row["categories"])]
    skipped: dict[str, str] = {}
    chosen = []
    for row in rows:
        if row["rapidapi"] and options.skipping_rapidapi:
            skipped[row["name"]] = "needs RapidAPI (live tools; set RAPID_API_KEY to run it)"
        elif options.user == "scripted" and "MULTIPLE_USER_TURN" in row["categories"]:
            skipped[row["name"]] = "needs an LLM user simulator (multiple user turns; --user scripted ends at once)"
        else:
            chosen.append(row["name"])
    if options.limit is not None:
        chosen = chosen[: options.limit]
    return chosen, skipped


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean similarity in percent, overall and per paper column, as ToolSandbox's ``get_category_summary``
    aggregates (a scrambled variant is not counted again under 3-DT). A column with no scenario is None."""
    per: dict[str, list[float]] = {category: [] for _, category in COLUMNS}
    turns: list[int] = []
    for row in results:
        categories = set(row["categories"])
        for category in categories:
            if category == "THREE_DISTRACTION_TOOLS" and categories & SCRAMBLED:
                continue
            if category in per:
                per[category].append(float(row["similarity"]))
        turns.append(int(row["turn_count"]))
    overall = [float(row["similarity"]) for row in results]
    return {
        "overall_similarity": round(100 * statistics.fmean(overall), 2) if overall else None,
        "columns": {column: (round(100 * statistics.fmean(per[category]), 2) if per[category] else None)
                    for column, category in COLUMNS},
        "counts": {column: len(per[category]) for column, category in COLUMNS},
        "mean_turn_count": round(statistics.fmean(turns), 2) if turns else None,
    }


@dataclass
class ToolSandboxReport:
    """Scores of one run in percent (see :func:`aggregate`), with what was skipped and what failed."""

    benchmark: str
    toolsandbox_commit: str | None
    policy: str
    user: str
    date: str
    run_dir: str
    scenarios: int
    scores: dict[str, Any]
    skipped: dict[str, str]
    errors: dict[str, str]
    elapsed_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every selected scenario has a result (none missing, none lost to an unreachable endpoint)."""
        return not self.notes

    def to_json(self) -> dict[str, Any]:
        return {"overall_similarity": self.scores["overall_similarity"],
                **{f"similarity_{column}": value for column, value in self.scores["columns"].items()},
                "stamp": f"{self.benchmark} {self.toolsandbox_commit or '(commit unknown)'}", **asdict(self)}

    def markdown(self) -> str:
        columns = [column for column, _ in COLUMNS]
        values = self.scores["columns"]
        cell = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        lines = [
            f"## ToolSandbox: {self.policy}",
            "",
            f"ToolSandbox {self.toolsandbox_commit or '(commit unknown)'}; user simulator {self.user}; {self.date}; "
            f"{self.scenarios} scenarios played, {len(self.skipped)} skipped, {len(self.errors)} raised (scored 0).",
            "",
            "| Overall | " + " | ".join(columns) + " |",
            "|" + "---|" * (len(columns) + 1),
            f"| {cell(self.scores['overall_similarity'])} | " + " | ".join(cell(values[c]) for c in columns) + " |",
            "",
            "Similarity in percent (milestone similarity, 0 where a minefield was hit), mean per category.",
        ]
        if self.skipped:
            reasons: dict[str, int] = {}
            for reason in self.skipped.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            lines += ["", "Skipped (not scored): " + "; ".join(f"{n} {r}" for r, n in reasons.items()) + "."]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def list_scenarios(python: str) -> dict[str, Any]:
    """The runner's ``list``: ToolSandbox's commit and every scenario with its categories."""
    done = subprocess.run([python, str(RUNNER), "list"], capture_output=True, text=True, timeout=900)
    line = _last_json_line(done.stdout)
    if done.returncode != 0 or line is None:
        raise ToolSandboxError(f"listing ToolSandbox's scenarios failed (exit {done.returncode}): "
                               f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output'}")
    return line


def _last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """Finished scenarios of ``results.jsonl`` by name. A line cut off by a kill is dropped and the file
    repaired (:func:`cm2_env.records.resume_jsonl`), so the scenario is played again and later lines start on
    their own line."""
    from cm2_env.records import resume_jsonl

    rows = resume_jsonl(path, lambda row: row if "name" in row and "similarity" in row else None)
    return {row["name"]: row for row in rows}


@contextlib.contextmanager
def policy_endpoint(options: ToolSandboxOptions) -> Iterator[dict[str, Any]]:
    """The agent spec the runner gets: an endpoint as given, a cm2 agent served for the run, or ToolSandbox's
    unhelpful agent for ``noop``."""
    from cm2_env.specs import parse

    parsed = parse(options.policy, "bench")
    if parsed.kind == "noop":
        yield {"kind": "unhelpful"}
        return
    if parsed.kind == "endpoint":
        yield _endpoint(parsed.value)
        return
    from agents import make_agent
    from agents.serve import ChatServer, serve_in_thread

    agent_options: dict[str, Any] = {"temperature": options.temperature} if parsed.kind == "hf" else {}
    agent = make_agent(options.policy, role="bench", **agent_options)
    with serve_in_thread(ChatServer(agent, model_name="cm2-policy")) as url:
        yield {"kind": "endpoint", "base_url": url, "model": "cm2-policy", "api_key_env": None}


def _endpoint(spec: str) -> dict[str, Any]:
    from cm2_env.llm.spec import parse_spec

    chat = parse_spec(spec)
    return {"kind": "endpoint", "base_url": chat.urls[0], "model": chat.model,
            "api_key_env": chat.options.get("key_env") or ("OPENAI_API_KEY" if "openai.com" in chat.urls[0] else None)}


def run_toolsandbox(options: ToolSandboxOptions, on_event: ProgressCallback | None = None) -> ToolSandboxReport:
    """Play the selected scenarios (resuming ``options.out``) and return the report (also written there)."""
    started = time.monotonic()
    emit = on_event or (lambda event: None)
    options.check()
    python = check_python(options.python)
    listing = list_scenarios(python)
    chosen, skipped = select(listing["scenarios"], options)
    out = options.out
    check_run_dir(out, options.manifest(listing["git_sha"]), ToolSandboxError)
    results_path = out / "results.jsonl"
    done = load_results(results_path)
    todo = [name for name in chosen if name not in done]
    unreachable: dict[str, str] = {}
    emit({"event": "start", "total": len(chosen), "todo": len(todo), "skipped": len(skipped)})
    if todo:
        user = {"kind": "scripted"} if options.user == "scripted" else _endpoint(options.user)
        with policy_endpoint(options) as agent:
            job = {"names": todo, "agent": agent, "user": user, "processes": options.concurrency,
                   "output_dir": str(out / "trajectories")}
            for row in _run_job(python, job, out):
                emit({"event": "scenario", **row})
                if row.get("unreachable"):  # an outage is not a score: no result, a resumed run plays it again
                    unreachable[row["name"]] = row.get("error") or row["exception_type"]
                    continue
                with results_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                done[row["name"]] = row
    results = [done[name] for name in chosen if name in done]
    errors = {row["name"]: f"{row['exception_type']}: {row.get('error') or ''}".strip()
              for row in results if row.get("exception_type")}
    notes = [] if len(results) == len(chosen) else [f"{len(chosen) - len(results)} selected scenarios have no result "
                                                    "yet: run the same command again to resume"]
    if unreachable:
        name, error = next(iter(unreachable.items()))
        notes.append(f"{len(unreachable)} scenarios failed because an endpoint was unreachable (not scored; e.g. "
                     f"{name}: {error.splitlines()[-1][:200]})")
    report = ToolSandboxReport(BENCHMARK, listing["git_sha"], options.policy, options.user, utc_now(), str(out),
                               len(results), aggregate(results), skipped, errors,
                               round(time.monotonic() - started, 1), notes)
    write_report(out, "toolsandbox_results", report.to_json(), report.markdown())
    return report


def _run_job(python: str, job: dict[str, Any], out: Path) -> Iterator[dict[str, Any]]:
    """Run the runner on ``job`` and yield each scenario's result as it ends; its stderr goes to
    ``out/toolsandbox.log``."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=out, delete=False) as handle:
        json.dump(job, handle)
        job_path = Path(handle.name)
    process = None
    try:
        with (out / "toolsandbox.log").open("a", encoding="utf-8") as log:
            process = subprocess.Popen([python, str(RUNNER), "run", str(job_path)], stdout=subprocess.PIPE,
                                       stderr=log, text=True, errors="replace", env=os.environ.copy())
            assert process.stdout is not None
            for line in process.stdout:
                row = _last_json_line(line)
                if row is not None and "name" in row and "similarity" in row:
                    yield row
            code = process.wait()
            process = None
        if code != 0:
            raise ToolSandboxError(f"the ToolSandbox runner exited with status {code}; see {out / 'toolsandbox.log'}"
                                   " (finished scenarios are kept: run again to resume)")
    finally:
        if process is not None:  # the caller stopped early (Ctrl-C, a full disk): stop the runner with it
            process.kill()
            process.wait()
        job_path.unlink(missing_ok=True)
