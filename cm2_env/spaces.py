"""The observation and action space of CM2ToolUse-v0: any Python string up to a maximum length.

Gymnasium's :class:`gymnasium.spaces.Text` only accepts characters of a fixed character set, but an LLM agent's
action (and a tool's answer inside an observation) can hold any Unicode character. :class:`TextSpace` keeps the
parts of ``Text`` that matter here and drops the character-set restriction:

- ``contains(x)`` is True iff ``x`` is a ``str`` with ``min_length <= len(x) <= max_length`` (length in Python
  characters, i.e. code points). Nothing else is checked: a string of any characters is a valid action.
- ``sample()`` draws printable ASCII text (``string.printable``) from the space's own seeded generator; the length
  is uniform in ``[min_length, sample_max_length]``. ``sample_max_length`` defaults to ``min(max_length, 1024)``
  so that random actions stay cheap to produce and to parse even when ``max_length`` is large.
- The space is not flattenable to a numpy array (``is_np_flattenable`` is False); batching it (vector envs) gives
  a ``Tuple`` of copies, as for ``Text``.
"""

from __future__ import annotations

import string
from typing import Any, Sequence

import numpy as np
from gymnasium.spaces import Space

#: Default characters of :meth:`TextSpace.sample`: printable ASCII (letters, digits, punctuation, whitespace).
PRINTABLE: str = string.printable
DEFAULT_SAMPLE_MAX_LENGTH = 1024


class TextSpace(Space[str]):
    """Strings of length ``min_length..max_length`` over any characters (see the module docstring)."""

    def __init__(
        self,
        max_length: int,
        *,
        min_length: int = 0,
        sample_charset: str = PRINTABLE,
        sample_max_length: int | None = None,
        seed: int | np.random.Generator | None = None,
    ):
        if not isinstance(max_length, (int, np.integer)) or max_length < 0:
            raise ValueError(f"max_length must be a non-negative int, got {max_length!r}")
        if not isinstance(min_length, (int, np.integer)) or not 0 <= min_length <= max_length:
            raise ValueError(f"min_length must be an int in [0, max_length={max_length}], got {min_length!r}")
        if not sample_charset:
            raise ValueError("sample_charset must hold at least one character")
        if sample_max_length is None:
            sample_max_length = max(min_length, min(max_length, DEFAULT_SAMPLE_MAX_LENGTH))
        if not min_length <= sample_max_length <= max_length:
            raise ValueError(
                f"sample_max_length must lie in [min_length={min_length}, max_length={max_length}], "
                f"got {sample_max_length}"
            )
        self.max_length = int(max_length)
        self.min_length = int(min_length)
        self.sample_max_length = int(sample_max_length)
        self.sample_charset = str(sample_charset)
        self._charset_array = np.array(list(self.sample_charset))
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        """True iff ``x`` is a ``str`` whose length lies in ``[min_length, max_length]``."""
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: int | None = None, probability: Any = None) -> str:
        """A random printable string. ``mask``, if given, is the exact length to draw (as ``Text``'s length part).

        ``probability`` is not supported (there is no per-character distribution) and must be None.
        """
        if probability is not None:
            raise ValueError("TextSpace.sample does not support probability=; pass mask=<length> or nothing")
        if mask is None:
            length = int(self.np_random.integers(self.min_length, self.sample_max_length + 1))
        else:
            if isinstance(mask, tuple):  # Text-style (length, charset_mask); the charset part is not supported
                mask = mask[0]
            length = int(mask)
            if not self.min_length <= length <= self.max_length:
                raise ValueError(f"mask length {length} is outside [{self.min_length}, {self.max_length}]")
        if length == 0:
            return ""
        return "".join(self.np_random.choice(self._charset_array, size=length))

    def to_jsonable(self, sample_n: Sequence[str]) -> list[str]:
        return [str(x) for x in sample_n]

    def from_jsonable(self, sample_n: Sequence[str]) -> list[str]:
        return [str(x) for x in sample_n]

    def __repr__(self) -> str:
        return f"TextSpace(min_length={self.min_length}, max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TextSpace)
            and other.min_length == self.min_length
            and other.max_length == self.max_length
            and other.sample_max_length == self.sample_max_length
            and other.sample_charset == self.sample_charset
        )

    def __hash__(self) -> int:
        return hash((TextSpace, self.min_length, self.max_length))
