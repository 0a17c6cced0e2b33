"""Model sources: each resolves a revision, lists files, and downloads one file resumably."""

from __future__ import annotations

from appliance.manifest import ModelManifest
from appliance.store.sources.base import Downloaded, ModelSource, RemoteFile


def source_for(manifest: ModelManifest) -> ModelSource:
    kind = manifest.source.kind
    if kind == "hf":
        from appliance.store.sources.hf import HFSource

        return HFSource(manifest)
    if kind == "modelscope":
        from appliance.store.sources.modelscope import ModelScopeSource

        return ModelScopeSource(manifest)
    from appliance.store.sources.local import LocalSource

    return LocalSource(manifest)


__all__ = ["Downloaded", "ModelSource", "RemoteFile", "source_for"]
