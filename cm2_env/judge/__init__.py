"""Checklist judges: decide which checklist items a transcript prefix satisfies (docs/judges.md).

``make_judge(spec, **options)``:

- ``"rule"``: :class:`RuleJudge` - deterministic, offline, approximate;
- ``"openai:URL#model"`` (any ``cm2_env.llm`` spec): :class:`LLMChecklistJudge`;
- ``"hybrid:openai:URL#model"``: :class:`HybridJudge` (rules where confident, the LLM otherwise);
- ``"noisy:P:JUDGE"``: :class:`NoisyJudge`, JUDGE with verdicts flipped at rate P (a study tool; option
  ``noise_seed``, the other options go to JUDGE);
- a :class:`ChecklistJudge` object: returned as is.

Options: ``votes``, ``batch_items``, ``temperature``, ``top_p``, ``sampling``, ``attempts``, ``max_prompt_chars``,
``structured`` (LLM judge), ``threshold``
(hybrid), ``llm_options`` (passed to ``cm2_env.llm.make_client``), ``client`` (an existing ChatClient).
"""

from __future__ import annotations

from typing import Any

from cm2_env.judge.base import ChecklistJudge, JudgeRequest, Verdict
from cm2_env.judge.hybrid import HybridJudge
from cm2_env.judge.llm import LLMChecklistJudge
from cm2_env.judge.noisy import NoisyJudge
from cm2_env.judge.rule import RuleJudge
from cm2_env.specs import check_options, noisy_parts, parse

__all__ = [
    "ChecklistJudge", "JudgeRequest", "Verdict", "RuleJudge", "LLMChecklistJudge", "HybridJudge", "NoisyJudge",
    "make_judge",
]

_LLM_OPTIONS = ("votes", "batch_items", "temperature", "top_p", "sampling", "attempts", "seed", "cache_size",
                "max_prompt_chars", "structured")


def make_judge(spec: str | ChecklistJudge = "rule", **options: Any) -> ChecklistJudge:
    """A judge from a spec string (``cm2_env.specs``, role ``judge``) or object (see the module docstring). A bad
    spec or option raises ``cm2_env.errors.SpecError``."""
    if isinstance(spec, ChecklistJudge):
        return spec
    parsed = parse(spec, "judge")
    if parsed.kind == "noisy":
        p, inner = noisy_parts(parsed.value)
        options = dict(options)
        seed = options.pop("noise_seed", 0)
        return NoisyJudge(make_judge(inner, **options), p, seed=seed)
    check_options("judge", options, {*_LLM_OPTIONS, "threshold", "llm_options", "client"})
    if parsed.kind == "rule":
        return RuleJudge()
    client = options.pop("client", None)
    owns_client = client is None
    if client is None:
        from cm2_env.llm import make_client

        client = make_client(parsed.value, role="judge", **dict(options.pop("llm_options", None) or {}))
    llm = LLMChecklistJudge(client, owns_client=owns_client, **{k: options[k] for k in _LLM_OPTIONS if k in options})
    if parsed.kind == "hybrid":
        return HybridJudge(llm, threshold=options.get("threshold", 0.85))
    return llm
