"""The models a profile serves with vLLM, in start order, with what the run time needs of each."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.manifest import Catalog, ModelManifest, Profile, ProfileModel


@dataclass(frozen=True)
class Served:
    name: str  # model = supervisord program = /models/<name>
    served_name: str  # --served-model-name, what /v1/models lists
    port: int
    essential: bool
    cold_start: float  # measured seconds to /health 200 (manifest resources.cold_start_seconds)
    manifest: ModelManifest
    entry: ProfileModel

    @property
    def engine(self) -> str:
        return self.manifest.engine

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def served_models(catalog: Catalog, profile: Profile) -> list[Served]:
    """Every model of the profile that vLLM serves, in the profile's order (the start order)."""
    result = []
    for entry in profile.models:
        manifest = catalog.model(entry.model)
        if manifest.serve is None:
            continue
        result.append(
            Served(
                name=manifest.name,
                served_name=manifest.serve.served_model_name,
                port=profile.port_of(manifest.name),
                essential=entry.essential,
                cold_start=manifest.resources.cold_start_seconds,
                manifest=manifest,
                entry=entry,
            )
        )
    return result
