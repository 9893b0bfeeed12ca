"""Checklist judges: decide which checklist items a transcript prefix satisfies (docs/judges.md).

``make_judge(spec, **options)``:

- ``"rule"``: :class:`RuleJudge` - deterministic, offline, approximate;
- ``"openai:URL#model"`` (any ``cm2_env.llm`` spec): :class:`LLMChecklistJudge`;
- ``"hybrid:openai:URL#model"``: :class:`HybridJudge` (rules where confident, the LLM otherwise);
- a :class:`ChecklistJudge` object: returned as is.

Options: ``votes``, ``batch_items``, ``temperature``, ``top_p``, ``sampling``, ``attempts``, ``max_prompt_chars``,
``structured`` (LLM judge), ``threshold``
(hybrid), ``llm_options`` (passed to ``cm2_env.llm.make_client``), ``client`` (an existing ChatClient).
"""

from __future__ import annotations

from typing import Any

from cm2_env.llm.spec import looks_like_llm_spec
from cm2_env.judge.base import ChecklistJudge, JudgeRequest, Verdict
from cm2_env.judge.hybrid import HybridJudge
from cm2_env.judge.llm import LLMChecklistJudge
from cm2_env.judge.rule import RuleJudge
from cm2_env.judge.variants import aggregate_verdicts, judge_variants

__all__ = [
    "ChecklistJudge", "JudgeRequest", "Verdict", "RuleJudge", "LLMChecklistJudge", "HybridJudge",
    "aggregate_verdicts", "judge_variants", "make_judge",
]

_LLM_OPTIONS = ("votes", "batch_items", "temperature", "top_p", "sampling", "attempts", "seed", "cache_size",
                "max_prompt_chars", "structured")


JUDGE_CHOICES = "'rule', an LLM spec such as 'openai:http://HOST:PORT/v1#MODEL', or 'hybrid:' + an LLM spec"


def make_judge(spec: Any = "rule", **options: Any) -> ChecklistJudge:
    """A judge from a spec string or object (see the module docstring)."""
    if not isinstance(spec, str):
        if isinstance(spec, ChecklistJudge):
            return spec
        raise TypeError(f"judge must be {JUDGE_CHOICES} or a ChecklistJudge object, got {spec!r}")
    unknown = sorted(set(options) - {*_LLM_OPTIONS, "threshold", "llm_options", "client"})
    if unknown:
        raise TypeError(f"unknown judge option(s) {unknown}; known: {sorted({*_LLM_OPTIONS, 'threshold', 'llm_options', 'client'})}")
    spec = spec.strip()
    if spec == "rule":
        return RuleJudge()
    hybrid = spec.startswith("hybrid:")
    llm_spec = spec[len("hybrid:"):] if hybrid else spec
    client = options.pop("client", None)
    if client is None and not looks_like_llm_spec(llm_spec):
        raise ValueError(f"unknown judge {spec!r}; choose {JUDGE_CHOICES}")
    owns_client = client is None
    if client is None:
        from cm2_env.llm import make_client

        client = make_client(llm_spec, role="judge", **dict(options.pop("llm_options", None) or {}))
    llm = LLMChecklistJudge(client, owns_client=owns_client, **{k: options[k] for k in _LLM_OPTIONS if k in options})
    if hybrid:
        return HybridJudge(llm, threshold=options.get("threshold", 0.85))
    return llm
