"""The one builder of an episode's backends: the tool simulator and the checklist judge.

``build_backends(simulator, judge, simulator_options=..., judge_options=...)`` takes each backend as an object
(used as it is) or a spec string (built by :func:`cm2_env.simulator.make_simulator` /
:func:`cm2_env.judge.make_judge` with its options) and returns :class:`Backends`: the two backends and the ones
it built, which it owns and closes with ``aclose()`` (their LLM clients' connection pools). The environment,
the vector environment and the rollout engine all build through it, so the same arguments mean the same thing
everywhere and nothing built is left open. Bad specs and options raise ``cm2_env.errors.SpecError`` naming the
valid choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cm2_env.judge.base import ChecklistJudge
    from cm2_env.simulator.base import ToolSimulator


@dataclass
class Backends:
    simulator: ToolSimulator
    judge: ChecklistJudge
    owned: list[Any] = field(default_factory=list)  # built from spec strings here: closed by aclose()

    async def aclose(self) -> None:
        """Close the backends built here (not objects that were passed in); closing twice is harmless."""
        from cm2_env.loop import close_backends

        owned, self.owned = self.owned, []
        await close_backends(owned)


def build_backends(simulator: str | ToolSimulator = "replay", judge: str | ChecklistJudge = "rule", *,
                   simulator_options: dict[str, Any] | None = None,
                   judge_options: dict[str, Any] | None = None) -> Backends:
    """The backends of an episode (see the module docstring)."""
    from cm2_env.errors import SpecError
    from cm2_env.judge import ChecklistJudge, make_judge
    from cm2_env.simulator import ToolSimulator, make_simulator
    from cm2_env.specs import choices

    backends = Backends(None, None)  # type: ignore[arg-type]  # both set below
    for role, spec, options, kind, factory in (
            ("simulator", simulator, simulator_options, ToolSimulator, make_simulator),
            ("judge", judge, judge_options, ChecklistJudge, make_judge)):
        if isinstance(spec, kind):
            if options:
                raise SpecError(f"{role}_options only apply to a {role} spec string, not to a {role} object. Fix: "
                                f"configure the {kind.__name__} object itself, or pass a spec string")
            built = spec
        elif isinstance(spec, str):
            built = factory(spec, **dict(options or {}))
            backends.owned.append(built)
        else:
            got = repr(spec) if spec is None or isinstance(spec, (int, float, bytes)) else type(spec).__name__
            raise SpecError(f"{role} must be a spec string ({choices(role)}) or a {kind.__name__} object, got "
                            f"{got}. Fix: pass one of those")
        setattr(backends, role, built)
    return backends
