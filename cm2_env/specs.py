"""Spec strings: the one grammar that names a policy, a tool simulator or a checklist judge.

The same strings work on the command line (``cm2 rollout --agent/--simulator/--judge``, ``cm2 bench
--policy``), in training configs (``simulator:``, ``judge:``) and in code (``agents.make_agent``,
``cm2_env.simulator.make_simulator``, ``cm2_env.judge.make_judge``)::

    replay                  policy: play the reference actions | simulator: recorded responses + schema checks
    rule                    judge: the deterministic rule judge
    ENDPOINT                any role: an OpenAI-compatible model,
                            [openai|vllm|sglang:]URL[,URL...]#MODEL[?option=value&...] (cm2_env.llm.spec)
    hybrid:ENDPOINT         judge: rules where they are confident, the endpoint's LLM otherwise
    noisy:P:JUDGE           judge: JUDGE with each verdict flipped with probability P (a study tool)
    hf:PATH                 policy: a local transformers model folder (never downloaded)
    probe:KIND[+calls]      policy: a deliberately gaming probe (agents.probes), for testing judges
    oracle | noop           benchmark policy: the benchmark's ground truth / no calls at all
    MODULE:ATTRIBUTE        policy: an agent object, class or zero-argument factory imported from Python

:data:`ROLES` says which forms each role takes. :func:`parse` classifies a string for a role and checks it up
front; a bad one raises :class:`~cm2_env.errors.SpecError` naming the role, the accepted forms and a fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cm2_env.errors import SpecError
from cm2_env.llm.spec import looks_like_llm_spec, parse_spec, redact

#: The forms of the grammar, with how each is written (used in error messages).
FORMS: dict[str, str] = {
    "replay": "replay",
    "rule": "rule",
    "endpoint": "openai:URL#MODEL (or vllm:/sglang:)",
    "hybrid": "hybrid:openai:URL#MODEL",
    "noisy": "noisy:P:JUDGE",
    "hf": "hf:PATH",
    "probe": "probe:KIND[+calls]",
    "oracle": "oracle",
    "noop": "noop",
    "python": "MODULE:ATTRIBUTE",
}
#: The forms each role accepts.
ROLES: dict[str, tuple[str, ...]] = {
    "policy": ("replay", "probe", "endpoint", "hf", "python"),
    "bench": ("oracle", "noop", "endpoint", "hf", "python"),
    "simulator": ("replay", "endpoint"),
    "judge": ("rule", "endpoint", "hybrid", "noisy"),
}
_LABELS = {"policy": "policy", "bench": "benchmark policy", "simulator": "simulator", "judge": "judge"}
_NAMES = ("replay", "rule", "oracle", "noop")
_PREFIXES = ("hybrid", "hf", "probe", "noisy")
_PYTHON_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class Spec:
    """A classified spec: ``kind`` is a key of :data:`FORMS`; ``value`` what follows the prefix (the endpoint
    spec for ``endpoint`` and ``hybrid``, the path for ``hf``, ``KIND[+calls]`` for ``probe``, the import path
    for ``python``; empty for the plain names); ``text`` the spec as given (stripped)."""

    kind: str
    value: str
    text: str


def choices(role: str) -> str:
    """The forms ``role`` accepts, for messages: ``'rule', 'openai:URL#MODEL (or vllm:/sglang:)' or ...``."""
    forms = [repr(FORMS[kind]) for kind in ROLES[role]]
    return ", ".join(forms[:-1]) + " or " + forms[-1]


def _classify(text: str) -> Spec | None:
    if text in _NAMES:
        return Spec(text, "", text)
    head, sep, rest = text.partition(":")
    if sep and head in _PREFIXES:
        return Spec(head, rest.strip(), text)
    if looks_like_llm_spec(text):
        return Spec("endpoint", text, text)
    if _PYTHON_PATH.match(text):
        return Spec("python", text, text)
    return None


def parse(text: object, role: str) -> Spec:
    """Classify ``text`` for ``role`` (a key of :data:`ROLES`) and check it: an endpoint spec is parsed in full
    (``LLMConfigError``, a :class:`SpecError`, for a bad URL or option), a prefix needs its value. Raises
    :class:`SpecError` for anything the role does not take."""
    if role not in ROLES:
        raise ValueError(f"unknown spec role {role!r}: use one of {', '.join(ROLES)}")
    if not isinstance(text, str):
        raise SpecError(f"{_LABELS[role]} spec must be a string, got {type(text).__name__} {text!r}. Fix: use "
                        f"{choices(role)}")
    stripped = text.strip()
    spec = _classify(stripped) if stripped else None
    if spec is None or spec.kind not in ROLES[role]:
        what = "is empty" if not stripped else f"{redact(stripped)!r} is not understood" if spec is None else \
            f"{redact(stripped)!r} ({FORMS[spec.kind]}) cannot be a {_LABELS[role]}"
        raise SpecError(f"{_LABELS[role]} spec {what}. Fix: use {choices(role)}")
    if spec.kind in ("endpoint", "hybrid"):
        parse_spec(spec.value)
    elif spec.kind == "noisy":
        noisy_parts(spec.value, role)
    elif spec.kind in ("hf", "probe") and not spec.value:
        raise SpecError(f"{_LABELS[role]} spec {stripped!r} names no {'folder' if spec.kind == 'hf' else 'probe kind'}. "
                        f"Fix: write {FORMS[spec.kind]}")
    return spec


def noisy_parts(value: str, role: str = "judge") -> tuple[float, str]:
    """``(p, inner judge spec)`` of a ``noisy:P:JUDGE`` spec's value; raises :class:`SpecError` when P is not a
    probability or JUDGE is not a judge spec."""
    head, _, inner = value.partition(":")
    try:
        p = float(head)
    except ValueError:
        p = -1.0
    if not 0.0 <= p <= 1.0 or not inner.strip():
        raise SpecError(f"{_LABELS[role]} spec 'noisy:{value}': write noisy:P:JUDGE with P in [0, 1], e.g. "
                        "noisy:0.05:rule")
    parse(inner, role)
    return p, inner.strip()


def check_options(role: str, given: object, known: object) -> None:
    """Raise :class:`SpecError` when ``given`` (option names) holds a name outside ``known``."""
    unknown = sorted(set(given) - set(known))  # type: ignore[call-overload]
    if unknown:
        raise SpecError(f"unknown {role} option(s) {', '.join(map(repr, unknown))}. Fix: use "
                        f"{', '.join(sorted(known))}")  # type: ignore[call-overload]
