"""The vLLM servers behind the gateway, derived from the profile: who serves which name, where."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.manifest import SERVED_ENGINES, Catalog, Profile


@dataclass(frozen=True)
class Upstream:
    model: str  # manifest name (= store folder, supervisord program)
    engine: str  # paddleocr-vl | dots-ocr | qwen3-vl
    served_name: str  # what vLLM answers to (`model` in OpenAI requests)
    port: int
    essential: bool
    max_model_len: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Upstreams:
    """Lookup by served name (OpenAI pass-through) and by engine (OCR API)."""

    def __init__(self, upstreams: list[Upstream]) -> None:
        self.all = upstreams
        self._by_name = {u.served_name: u for u in upstreams}

    @classmethod
    def from_profile(cls, catalog: Catalog, profile: Profile) -> Upstreams:
        result = []
        for entry in profile.models:
            manifest = catalog.model(entry.model)
            if manifest.serve is None or manifest.engine not in SERVED_ENGINES:
                continue
            result.append(
                Upstream(
                    model=manifest.name,
                    engine=manifest.engine,
                    served_name=manifest.serve.served_model_name,
                    port=profile.port_of(manifest.name),
                    essential=entry.essential,
                    max_model_len=entry.max_model_len,
                )
            )
        return cls(result)

    def by_name(self, served_name: str) -> Upstream | None:
        return self._by_name.get(served_name)

    def for_engine(self, engine: str) -> list[Upstream]:
        """The profile's models of one engine, in profile order (the first is the default)."""
        return [u for u in self.all if u.engine == engine]

    @property
    def names(self) -> list[str]:
        return list(self._by_name)
