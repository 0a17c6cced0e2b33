"""Model manifests and profiles: the validated, typed view of `manifests/models|profiles/*.yaml`.

A manifest states intent (which repo, which revision — possibly a branch — which files, how vLLM
serves it); the lock (`appliance.store.lock`) records what that intent resolved to.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance import constants
from appliance.errors import ManifestError, UnknownNameError

Engine = Literal["paddleocr-vl", "dots-ocr", "qwen3-vl", "paddle-layout"]
SourceKind = Literal["hf", "modelscope", "dir", "tar"]
SERVED_ENGINES = ("paddleocr-vl", "dots-ocr", "qwen3-vl")

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# Model names become directory names under /models and supervisord program names: no dots
# (dots.ocr's remote code breaks when served from a dir whose name has one), no slashes.
NAME_RE = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
Name = Annotated[str, Field(pattern=NAME_RE, max_length=64)]


class _Strict(BaseModel):
    # A typo in a manifest is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where a model comes from: `hf:org/repo`, `modelscope:org/repo`, `dir:/path`, `tar:/path.tar`."""

    kind: SourceKind
    location: str

    @classmethod
    def parse(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        kind, sep, location = value.partition(":")
        if not sep or not location:
            raise ValueError(f"source {value!r} must be hf:org/repo, modelscope:org/repo, dir:/path or tar:/file")
        if kind not in ("hf", "modelscope", "dir", "tar"):
            raise ValueError(
                f"source kind {kind!r} is not one of hf:org/repo, modelscope:org/repo, dir:/path, tar:/file"
            )
        if kind in ("hf", "modelscope") and not re.fullmatch(r"[\w.-]+/[\w.-]+", location):
            raise ValueError(f"repo id {location!r} must be 'owner/name'")
        return {"kind": kind, "location": location}

    @property
    def is_hub(self) -> bool:
        return self.kind in ("hf", "modelscope")

    def __str__(self) -> str:
        return f"{self.kind}:{self.location}"


class Serve(_Strict):
    """How vLLM serves the model (DESIGN §6). Profile-dependent values live in the profile."""

    served_model_name: str
    trust_remote_code: bool = False
    chat_template_content_format: Literal["string", "openai"] | None = None
    # Path relative to the model directory (e.g. a PaddleX chat template shipped in the repo).
    chat_template: str | None = None
    generation_config: Literal["auto", "vllm"] | None = None
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    enable_prefix_caching: bool | None = None
    limit_mm_per_prompt: dict[str, int] = Field(default_factory=lambda: {"image": 1, "video": 0})
    mm_processor_kwargs: dict[str, Any] | None = None
    # Accept per-request mm_processor_kwargs (vLLM refuses them otherwise). The official PaddleOCR
    # pipeline sends its pixel limits with every request; the gateway's OpenAI pass-through strips
    # the field from client requests, so only our own pipeline can use it.
    trust_request_mm_kwargs: bool = False
    # Keys vLLM sets on the loaded HF config (`--hf-overrides`), e.g. PaddleOCR-VL's
    # tie_word_embeddings, which transformers 5's native config turns from the repo's false to true.
    hf_overrides: dict[str, Any] | None = None
    dtype: str | None = None
    extra_args: list[str] = Field(default_factory=list)


class Layout(_Strict):
    """The Paddle layout model a PaddleOCR-VL pipeline needs: a sub-folder of this repo, or another manifest."""

    model_name: str  # what PaddleX calls it: PP-DocLayoutV2 / PP-DocLayoutV3 (`Global.model_name`)
    subdir: str | None = None
    model: Name | None = None
    pipeline_version: str  # PaddleOCRVL(pipeline_version=...): v1 pairs with PP-DocLayoutV2
    # Its ONNX export (another manifest: inference.onnx + inference.yml), run by ONNX Runtime on the
    # GPU in cuda profiles (appliance/runtime/layout.py); shipped only with cuda profiles.
    gpu_model: Name | None = None

    @model_validator(mode="after")
    def _one_place(self) -> Layout:
        if (self.subdir is None) == (self.model is None):
            raise ValueError("layout needs exactly one of 'subdir' (folder of this repo) or 'model' (another manifest)")
        return self


class Resources(_Strict):
    """Figures the GPU planner and probe timings are derived from."""

    weight_bytes: int = Field(gt=0)
    kv_bytes_per_token: int = Field(default=0, ge=0)
    # Activations, CUDA graphs and the vision encoder's peak on top of weights + KV cache.
    overhead_bytes: int = Field(default=1_500_000_000, ge=0)
    cold_start_seconds: float = Field(default=180, gt=0)
    min_compute_capability: float | None = None


class ModelManifest(_Strict):
    name: Name
    engine: Engine
    description: str = ""
    source: Source
    revision: str | None = None
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    serve: Serve | None = None
    layout: Layout | None = None
    resources: Resources
    # Modules the model's remote code imports beyond vLLM's own (the GOT-OCR/verovio trap).
    python_packages: list[str] = Field(default_factory=list)
    license: str | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _parse_source(cls, value: Any) -> Any:
        return Source.parse(value)

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        if self.source.is_hub and not self.revision:
            raise ValueError("hub sources need 'revision' (a 40-hex commit id, or a branch/tag to lock)")
        if self.engine in SERVED_ENGINES and self.serve is None:
            raise ValueError(f"engine {self.engine} is served by vLLM and needs a 'serve' section")
        if self.engine == "paddle-layout" and self.serve is not None:
            raise ValueError("a paddle-layout model is not served by vLLM: remove 'serve'")
        if self.layout is not None and self.engine != "paddleocr-vl":
            raise ValueError("'layout' only applies to engine paddleocr-vl")
        return self

    @property
    def is_pinned(self) -> bool:
        return bool(self.revision and COMMIT_RE.match(self.revision))


class ProfileModel(_Strict):
    model: Name
    essential: bool = True
    max_model_len: int = Field(default=8192, gt=0)
    max_num_seqs: int = Field(default=8, gt=0)
    # Output cap per page the gateway asks for; default min(4096, max_model_len // 2) leaves the
    # other half of the context for the page's image tokens and the prompt.
    max_new_tokens: int | None = Field(default=None, gt=0)
    port: int | None = Field(default=None, gt=0, lt=65536)

    @model_validator(mode="after")
    def _cap_inside_context(self) -> ProfileModel:
        if self.max_new_tokens is not None and self.max_new_tokens >= self.max_model_len:
            raise ValueError(
                f"max_new_tokens {self.max_new_tokens} leaves no room in max_model_len {self.max_model_len} "
                "for the page's image tokens and the prompt"
            )
        return self

    @property
    def output_tokens(self) -> int:
        return self.max_new_tokens or min(4096, self.max_model_len // 2)


class Target(_Strict):
    device: Literal["cuda", "cpu"]
    gpu_memory_gib: float | None = Field(default=None, gt=0)
    compute_capability: float | None = None
    # Share of GPU memory the planner may hand out in total (vLLM and the CUDA context need slack).
    safe_fraction: float = Field(default=0.90, gt=0, le=1)
    cpu_kvcache_gib: int = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _gpu_needs_memory(self) -> Target:
        if self.device == "cuda" and self.gpu_memory_gib is None:
            raise ValueError("a cuda target needs gpu_memory_gib")
        return self


class Profile(_Strict):
    name: Name
    description: str = ""
    target: Target
    base_image: str
    gateway_port: int = Field(default=8080, gt=0, lt=65536)
    first_engine_port: int = Field(default=8101, gt=0, lt=65536)
    models: list[ProfileModel] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        names = [m.model for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models listed twice: {', '.join(dupes)}")
        return self

    def port_of(self, model: str) -> int:
        """Explicit port, else consecutive ports from first_engine_port in listing order."""
        for index, entry in enumerate(self.models):
            if entry.model == model:
                return entry.port or self.first_engine_port + index
        raise UnknownNameError("model in profile " + self.name, model, [m.model for m in self.models])


# --- loading --------------------------------------------------------------------------------------


def _format_errors(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return problems


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:  # unreadable or not text: one line, no traceback
        raise ManifestError(path, [f"cannot read: {getattr(exc, 'strerror', None) or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ManifestError(path, [f"not valid YAML: {exc}"]) from exc


def _validate(cls: type[_Strict], path: Path) -> Any:
    data = _load_yaml(path)
    if not isinstance(data, dict):
        raise ManifestError(path, ["(top level): expected a mapping"])
    try:
        obj = cls.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(path, _format_errors(exc)) from None
    if obj.name != path.stem:  # type: ignore[attr-defined]
        raise ManifestError(path, [f"name: {obj.name!r} must equal the file name {path.stem!r}"])  # type: ignore[attr-defined]
    return obj


class Catalog:
    """All manifests and profiles under one `manifests/` directory, loaded on demand."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or constants.manifests_dir()
        self._models: dict[str, ModelManifest] = {}
        self._profiles: dict[str, Profile] = {}

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def profiles_dir(self) -> Path:
        return self.root / "profiles"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    def model_names(self) -> list[str]:
        return sorted(p.stem for p in self.models_dir.glob("*.yaml"))

    def profile_names(self) -> list[str]:
        return sorted(p.stem for p in self.profiles_dir.glob("*.yaml"))

    def model(self, name: str) -> ModelManifest:
        return self._models.get(name) or self._load(name, ModelManifest, self.models_dir, "model", self._models)

    def profile(self, name: str) -> Profile:
        profile = self._profiles.get(name) or self._load(name, Profile, self.profiles_dir, "profile", self._profiles)
        missing = [m.model for m in profile.models if m.model not in self.model_names()]
        if missing:
            raise ManifestError(self.profiles_dir / f"{name}.yaml", [f"models: no manifest for {', '.join(missing)}"])
        return profile

    def profile_models(self, name: str) -> list[ModelManifest]:
        """The profile's models, plus the layout models they reference (fetched and shipped with them;
        a layout model's ONNX export for the GPU only with a cuda profile)."""
        profile = self.profile(name)
        names = [m.model for m in profile.models]
        for model in [self.model(n) for n in names]:
            if model.layout is None:
                continue
            wanted = [model.layout.model, model.layout.gpu_model if profile.target.device == "cuda" else None]
            names += [n for n in wanted if n and n not in names]
        return [self.model(n) for n in names]

    def lock_path(self, model: str) -> Path:
        return self.locks_dir / f"{model}.lock.json"

    @staticmethod
    def _load(name: str, cls: type, directory: Path, kind: str, cache: dict) -> Any:
        path = directory / f"{name}.yaml"
        if not re.match(NAME_RE, name) or not path.is_file():
            raise UnknownNameError(kind, name, sorted(p.stem for p in directory.glob("*.yaml")))
        cache[name] = obj = _validate(cls, path)
        return obj

    def check_all(self) -> list[ManifestError]:
        """Validate every manifest and profile; returns the errors instead of stopping at the first."""
        errors: list[ManifestError] = []
        for name in self.model_names():
            try:
                model = self.model(name)
                for key in ("model", "gpu_model"):
                    other = getattr(model.layout, key) if model.layout else None
                    if other and other not in self.model_names():
                        raise ManifestError(self.models_dir / f"{name}.yaml", [f"layout.{key}: no manifest {other!r}"])
            except ManifestError as exc:
                errors.append(exc)
        for name in self.profile_names():
            try:
                self.profile(name)
            except ManifestError as exc:
                errors.append(exc)
        return errors
