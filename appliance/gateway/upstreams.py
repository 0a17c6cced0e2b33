"""The vLLM servers behind the gateway: lookup by served name (OpenAI pass-through) and engine."""

from __future__ import annotations

from appliance.runtime.served import Served


class Upstreams:
    def __init__(self, served: list[Served]) -> None:
        self.all = served
        self._by_name = {s.served_name: s for s in served}

    def by_name(self, served_name: str) -> Served | None:
        return self._by_name.get(served_name)

    def for_engine(self, engine: str) -> list[Served]:
        """The profile's models of one engine, in profile order (the first is the engine's default)."""
        return [s for s in self.all if s.engine == engine]

    @property
    def names(self) -> list[str]:
        return list(self._by_name)
