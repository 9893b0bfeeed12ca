"""The private event loop behind the synchronous ``reset``/``step`` of the async environments.

``PrivateLoop.run(coroutine)`` runs a coroutine to completion on a loop owned by one env (created on first use,
reused afterwards, so backends bound to a loop keep working). Called from inside a running event loop it refuses
with an error that names the coroutine API to use instead (a nested ``run_until_complete`` cannot work there).
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine


class PrivateLoop:
    """An event loop owned by one environment (see the module docstring)."""

    def __init__(self, async_hint: str):
        self.async_hint = async_hint
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coroutine.close()
            raise RuntimeError(f"the synchronous API was called inside a running event loop; {self.async_hint}")
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()
        self._loop = None

    def __del__(self) -> None:
        # A loop dropped without close() should not leak (a ResourceWarning in tests). At interpreter exit the
        # modules it needs may already be gone: then there is nothing left to leak.
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


async def close_backends(backends: list[Any]) -> None:
    """``await backend.aclose()`` for each backend that has it; closing never raises."""
    for backend in backends:
        closer = getattr(backend, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:  # noqa: BLE001 - closing must not fail (Gymnasium may call close() twice)
                pass
