"""The project's error family for bad spec strings and options (the bottom layer: every other module may use it).

A spec names a policy, a tool simulator or a checklist judge (:mod:`cm2_env.specs`); options are the keyword
arguments that go with it. Whatever rejects one raises :class:`SpecError`, so callers and the command line
catch one type. ``cm2_env.llm.LLMConfigError`` (a bad endpoint spec or client option) is one of them.
"""

from __future__ import annotations


class SpecError(ValueError):
    """A spec string or one of its options is invalid. The message names the spec (secrets masked), the role it
    was given for, what is wrong and how to fix it. Raised before any work starts."""
