"""N episodes of CM2ToolUse-v0 at once, concurrently in one event loop, behind Gymnasium's vector API.

Contract (``gymnasium.vector.VectorEnv``):

- ``reset(seed=None | int | list, options=None)`` -> ``(observations, infos)``; an int seed s seeds sub-env i
  with s + i. ``options`` go to every sub-env, except ``"dialogue_ids"`` (a list: one dialogue id per sub-env)
  and ``"reset_mask"`` (a numpy bool array: reset only those sub-envs, as Gymnasium's ``SyncVectorEnv``).
- ``step(actions)`` with one action string per sub-env -> ``(observations, rewards, terminations, truncations,
  infos)``. Observations are a tuple of strings (the batched space is a ``Tuple`` of :class:`TextSpace`);
  rewards a float64 array; terminations/truncations bool arrays; ``infos`` a dict of arrays with a boolean mask
  ``"_key"`` per key (Gymnasium's ``_add_info``), nested dicts (``usage``) recursively so.
- All sub-envs' ``astep`` coroutines run together under ``asyncio.gather``, so a step costs about as long as
  the slowest sub-env's simulator and judge calls, not their sum. ``areset``/``astep`` are the coroutines;
  ``reset``/``step`` run them on a private event loop.
- Autoreset (``metadata["autoreset_mode"]``, chosen with ``autoreset_mode=``):
  * ``NEXT_STEP`` (default, as Gymnasium's): the step after a sub-env ended resets it instead -- its action is
    ignored, its reward is 0 and its info is the reset info;
  * ``SAME_STEP``: a sub-env that ends is reset within the same step; the returned observation is the new
    episode's, the ending one is in ``infos["final_obs"]`` and its info in ``infos["final_info"]`` (the
    ``reward_record`` of the finished episode is there);
  * ``DISABLED``: nothing is reset automatically; reset ended sub-envs with ``options={"reset_mask": mask}``.
- The sub-envs share one dataset, one simulator and one judge (built once from the given specs).
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from cm2_env.env import CM2ToolUseEnv
from cm2_env.backends import build_backends
from cm2_env.loop import PrivateLoop


class CM2VectorEnv(VectorEnv):
    """``num_envs`` concurrent :class:`~cm2_env.env.CM2ToolUseEnv` episodes (see the module docstring).

    ``env_kwargs`` are the keyword arguments of :class:`~cm2_env.env.CM2ToolUseEnv`.
    """

    def __init__(self, num_envs: int = 1, *, autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 **env_kwargs: Any):
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {"autoreset_mode": self.autoreset_mode, "render_modes": ["ansi"]}
        self.render_mode = env_kwargs.get("render_mode")
        shared = {k: v for k, v in env_kwargs.items() if k not in ("simulator_options", "judge_options")}
        self._backends = build_backends(shared.pop("simulator", "replay"), shared.pop("judge", "rule"),
                                        simulator_options=env_kwargs.get("simulator_options"),
                                        judge_options=env_kwargs.get("judge_options"))
        shared.update(simulator=self._backends.simulator, judge=self._backends.judge)
        first = CM2ToolUseEnv(**shared)
        shared["dataset"] = first.dialogues
        self.envs: list[CM2ToolUseEnv] = [first] + [CM2ToolUseEnv(**shared) for _ in range(num_envs - 1)]
        self.num_envs = num_envs
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._observations: list[str] = [""] * num_envs
        self._ended = np.zeros(num_envs, dtype=np.bool_)
        self._sync = PrivateLoop("await envs.areset(...) / envs.astep(...) there")

    # --- the async API --------------------------------------------------------------------------------

    async def areset(self, *, seed: int | Sequence[int | None] | None = None,
                     options: dict[str, Any] | None = None) -> tuple[tuple[str, ...], dict[str, Any]]:
        """Reset all sub-envs (or those in ``options["reset_mask"]``) concurrently."""
        seeds = _seeds(seed, self.num_envs)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        dialogue_ids = options.pop("dialogue_ids", None)
        if mask is None:
            mask = np.ones(self.num_envs, dtype=np.bool_)
        elif not (isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (self.num_envs,)):
            raise ValueError(f"options['reset_mask'] must be a numpy bool array of shape ({self.num_envs},)")
        if dialogue_ids is not None and len(dialogue_ids) != self.num_envs:
            raise ValueError(f"options['dialogue_ids'] must name one dialogue per sub-env ({self.num_envs})")
        indices = [i for i in range(self.num_envs) if mask[i]]

        def env_options(i: int) -> dict[str, Any] | None:
            if dialogue_ids is None:
                return options or None
            return {**options, "dialogue_id": dialogue_ids[i]}

        results = await asyncio.gather(*(self.envs[i].areset(seed=seeds[i], options=env_options(i)) for i in indices))
        infos: dict[str, Any] = {}
        for i, (observation, info) in zip(indices, results):
            self._observations[i] = observation
            self._ended[i] = False
            infos = self._add_info(infos, info, i)
        return tuple(self._observations), infos

    async def astep(self, actions: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One action per sub-env; all sub-envs advance concurrently (see the module docstring for autoreset)."""
        actions = list(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"got {len(actions)} actions for {self.num_envs} sub-envs; give one action per sub-env")
        if self.autoreset_mode == AutoresetMode.DISABLED and self._ended.any():
            ended = np.flatnonzero(self._ended).tolist()
            raise RuntimeError(f"sub-envs {ended} have ended; reset them with options={{'reset_mask': mask}} first")
        resetting = self._ended.copy() if self.autoreset_mode == AutoresetMode.NEXT_STEP else np.zeros_like(self._ended)
        outcomes = await asyncio.gather(*(self._advance(i, actions[i], bool(resetting[i])) for i in range(self.num_envs)))
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminations = np.zeros(self.num_envs, dtype=np.bool_)
        truncations = np.zeros(self.num_envs, dtype=np.bool_)
        infos: dict[str, Any] = {}
        for i, (observation, reward, terminated, truncated, info, final) in enumerate(outcomes):
            if final is not None:
                infos = self._add_info(infos, {"final_obs": final[0], "final_info": final[1]}, i)
            self._observations[i] = observation
            rewards[i], terminations[i], truncations[i] = reward, terminated, truncated
            infos = self._add_info(infos, info, i)
        self._ended = terminations | truncations
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            self._ended[:] = False  # already reset inside _advance
        return tuple(self._observations), rewards, terminations, truncations, infos

    async def _advance(self, i: int, action: str, reset: bool) -> tuple[str, float, bool, bool, dict[str, Any], Any]:
        env = self.envs[i]
        if reset:
            observation, info = await env.areset()
            return observation, 0.0, False, False, info, None
        observation, reward, terminated, truncated, info = await env.astep(action)
        if self.autoreset_mode == AutoresetMode.SAME_STEP and (terminated or truncated):
            final = (observation, info)
            observation, info = await env.areset()
            return observation, reward, terminated, truncated, info, final
        return observation, reward, terminated, truncated, info, None

    # --- the sync API ---------------------------------------------------------------------------------

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[tuple[str, ...], dict[str, Any]]:
        return self._run(self.areset(seed=seed, options=options))

    def step(self, actions: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        return self._run(self.astep(actions))

    def _run(self, coroutine: Any) -> Any:
        return self._sync.run(coroutine)

    def render(self) -> tuple[str | None, ...] | None:
        """Each sub-env's ``render()`` (transcripts with verdicts when render_mode="ansi")."""
        if self.render_mode is None:
            return None
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        # The shared backends were built here and used on this loop: close them here.
        if self._backends.owned:
            try:
                self._run(self._backends.aclose())
            except RuntimeError:  # closed inside a running loop: that loop's owner closes them
                pass
        for env in self.envs:
            env.close()
        self._sync.close()


def _seeds(seed: int | Sequence[int | None] | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} sub-envs; give one seed per sub-env (or an int)")
    return seeds
