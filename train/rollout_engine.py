"""Which engine samples the rollouts, and how it gets the policy's current weights (``rollout_engine``).

An :data:`AgentFactory` builds the rollout policy of one collection from the model being trained:
``(model, tokenizer, config, seed, temperature) -> agent``. The agent records every action's prompt ids,
completion ids and sampling logprobs (``agents.AgentStep``) and must sample from the model's CURRENT weights.

- ``rollout_engine: transformers`` (default): :func:`transformers_agent`, ``model.generate`` on the trained
  model itself; nothing to synchronise.
- ``rollout_engine: vllm``: :class:`VLLMRollouts`, which keeps one vLLM engine for the whole run and pushes the
  weights to it before every collection (agents.vllm_agent):

  - ``rollout_endpoint: ""``: a colocated ``vllm.LLM`` in each trainer process, updated in place from the
    model's tensors; on GPUs it sleeps during the update (``vllm_sleep``);
  - ``rollout_endpoint: vllm:URL[,URL...]#MODEL``: vLLM servers. Rank 0 writes the weights as safetensors to
    ``weight_sync_dir`` (a folder the servers can read at the same path) and has every server reload them; the
    push fails unless every server then reports the new weight version.

  Rollouts never sample from stale weights: the push happens before every collection, and there is no
  off-policy lag option.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

#: Builds the rollout policy of one collection (module docstring).
AgentFactory = Callable[[Any, Any, Any, int, float], Any]


def transformers_agent(model: Any, tokenizer: Any, config: Any, seed: int, temperature: float) -> Any:
    """The default :data:`AgentFactory`: :class:`agents.TransformersAgent` on the model being trained."""
    from agents import TransformersAgent

    return TransformersAgent(model, tokenizer, max_new_tokens=config.max_new_tokens, temperature=temperature,
                             top_p=config.top_p, max_batch_size=config.max_batch_size, seed=seed,
                             max_prompt_tokens=config.max_prompt_tokens)


class VLLMRollouts:
    """The :data:`AgentFactory` of ``rollout_engine: vllm`` (module docstring). The colocated engine is built
    on the first call, from ``config.model``. ``pushes``, ``last_push_s`` and ``version`` describe the weight
    pushes so far (the trainer logs them)."""

    def __init__(self, config: Any):
        self.config = config
        self.remote = bool(config.rollout_endpoint)
        self.engine: Any = None
        self.client: Any = None
        self.pushes = 0
        self.last_push_s = 0.0
        self.version = ""

    def __call__(self, model: Any, tokenizer: Any, config: Any, seed: int, temperature: float) -> Any:
        from agents.vllm_agent import RemoteVLLMAgent, VLLMAgent

        self.push(model)
        options = {"max_new_tokens": config.max_new_tokens, "temperature": temperature, "top_p": config.top_p,
                   "max_prompt_tokens": config.max_prompt_tokens, "seed": seed}
        if self.remote:
            return RemoteVLLMAgent(self._client(), tokenizer, **options)
        engine = self._engine()
        # a prompt the engine cannot complete ends its episode as truncated, as one over max_prompt_tokens does
        fits = engine.max_model_len - config.max_new_tokens
        options["max_prompt_tokens"] = max(1, min(config.max_prompt_tokens, fits))
        return VLLMAgent(engine, tokenizer, **options)  # no batch cap: vLLM schedules the requests

    def push(self, model: Any) -> None:
        """Make the engine (or every server) sample from ``model``'s current weights."""
        started = time.perf_counter()
        self.version = f"cm2-{self.pushes + 1}"
        if self.remote:
            self._push_remote(model)
        else:
            self._engine().push_weights(model.state_dict().items(), self.version)
        self.pushes += 1
        self.last_push_s = time.perf_counter() - started

    def rollouts_done(self) -> None:
        """Called after a collection: the colocated engine frees its GPU memory for the update."""
        if self.engine is not None:
            self.engine.sleep()

    def metrics(self) -> dict[str, Any]:
        return {"engine": "vllm-remote" if self.remote else "vllm", "weight_version": self.version,
                "weight_push_s": self.last_push_s}

    def _engine(self) -> Any:
        if self.engine is None:
            import os

            from agents.vllm_agent import VLLMEngine

            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                # vLLM's in-process executor puts its worker on rank 0's device, whatever the trainer's rank
                raise RuntimeError("rollout_engine: vllm with a colocated engine runs in one trainer process only; "
                                   "under torchrun with several ranks every engine would land on the first GPU. "
                                   "Fix: serve the policy with vLLM servers and set rollout_endpoint "
                                   "(docs/scaling.md)")

            c = self.config
            self.engine = VLLMEngine(c.model, max_model_len=c.vllm_max_model_len or _default_model_len(c),
                                     tensor_parallel_size=c.vllm_tensor_parallel_size,
                                     gpu_memory_utilization=c.vllm_gpu_memory_utilization, sleep_mode=c.vllm_sleep,
                                     dtype=c.vllm_dtype, seed=c.seed, enforce_eager=c.vllm_enforce_eager)
        return self.engine

    def _client(self) -> Any:
        if self.client is None:
            from cm2_env.llm import make_client

            self.client = make_client(self.config.rollout_endpoint, role="policy")
        return self.client

    def _push_remote(self, model: Any) -> None:
        from agents.vllm_agent import push_weights_to_servers, save_engine_weights
        from train.distributed import init_distributed

        dist = init_distributed()
        folder = Path(self.config.weight_sync_dir or Path(self.config.output_dir) / "weight-sync")
        if dist.main:
            folder.mkdir(parents=True, exist_ok=True)
            save_engine_weights(model, folder)
            push_weights_to_servers(self._client().endpoints, folder, self.version)
        dist.barrier()


def _default_model_len(config: Any) -> int:
    """max_prompt_tokens + max_new_tokens, capped at the model's ``max_position_embeddings`` (vLLM refuses more;
    a prompt that does not fit then ends its episode as truncated)."""
    import json

    wanted = config.max_prompt_tokens + config.max_new_tokens
    try:
        model_config = json.loads((Path(config.model) / "config.json").read_text(encoding="utf-8"))
        limit = model_config.get("max_position_embeddings")
    except (OSError, ValueError):
        limit = None
    return min(wanted, int(limit)) if isinstance(limit, int) and limit > 0 else wanted


def rollout_factory(config: Any) -> AgentFactory:
    """The :data:`AgentFactory` that ``config.rollout_engine`` selects."""
    return VLLMRollouts(config) if config.rollout_engine == "vllm" else transformers_agent
