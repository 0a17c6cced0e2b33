"""`appliance image warm`: bake each model's compile cache into the image, one layer per model.

The cold image (`appliance image build`) is booted once, offline, on this host's device, exactly as
the air-gap proof boots it (`proof.ImageBoot`: `buildah run` in a loopback-only namespace), until
every model is ready; one page per engine is read; then what each model's start wrote into its own
writable cache dir (`compile_cache.compile_dir()/<model>`: vLLM's compile cache, inductor's and
Triton's caches, and the key the launcher recorded) is copied out of the container and added on top
of the image, one `COPY` per model, under /opt/appliance/warm/<model> (`compile_cache` explains
what the launcher does with it). The cold image stays tagged `<ref>-cold`, and warming a warm image
starts again from it.

Compiled artefacts are not byte-reproducible, so a model's baked dir is kept in
work/warm/<profile>/<model> between runs and reused while its key (vLLM, torch, device, lock digest,
serve flags) is unchanged: re-warming after a one-model update changes only that model's layer, and
a delta bundle ships only it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, ImageError
from appliance.image import dockerfile
from appliance.image.archive import Layer, cache_layers
from appliance.image.builder import buildah_bud, inspect_layers
from appliance.image.layout import CACHE_DIR, WARM_LABEL, WARM_ROOT
from appliance.image.proof import ImageBoot, read_pages
from appliance.image.tools import image_exists, run
from appliance.manifest import Catalog, Profile
from appliance.runtime import compile_cache
from appliance.runtime.served import served_models

COMPILE_DIR = CACHE_DIR / "compile"  # the launcher's writable per-model dirs in the image ($HOME/compile)
# How a GPU reaches the warming boot: the CDI name nvidia-container-toolkit generates
# (`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`); APPLIANCE_WARM_DEVICES overrides it.
GPU_DEVICES = ("nvidia.com/gpu=all",)


def warm_devices(profile: Profile) -> tuple[str, ...]:
    value = os.environ.get("APPLIANCE_WARM_DEVICES")
    if value is not None:
        return tuple(d for d in value.split(",") if d)
    return GPU_DEVICES if profile.target.device == "cuda" else ()


@dataclass
class WarmResult:
    ref: str
    cold_ref: str
    shipped_cold: str | None = None  # why the image ships without caches (no warming happened)
    seconds_to_ready: float = 0.0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # model → files, bytes, reused
    layers: dict[str, Layer] = field(default_factory=dict)


def cold_ref(ref: str) -> str:
    return f"{ref}-cold"


def _labels(ref: str) -> dict[str, str]:
    data = json.loads(run(["podman", "image", "inspect", ref], f"inspecting {ref}", quiet=True))[0]
    return data.get("Labels") or data.get("Config", {}).get("Labels") or {}


def image_warm_models(ref: str) -> list[str]:
    """The models whose caches an image carries (its WARM_LABEL); [] for a cold or missing image."""
    try:
        return [m for m in _labels(ref).get(WARM_LABEL, "").split(",") if m]
    except (ApplianceError, OSError, ValueError, IndexError):
        return []


def gpu_missing(profile: Profile) -> str | None:
    """Why this host cannot warm `profile` (None: it can). A GPU profile needs its GPU class here."""
    if profile.target.device != "cuda":
        return None
    device = compile_cache.gpu_device()
    if device.get("error"):
        return f"profile {profile.name} runs on a GPU and this build host has none ({device['error']})"
    capability = profile.target.compute_capability
    if capability is not None and abs(float(device["compute_capability"]) - capability) > 1e-6:
        return (f"profile {profile.name} targets compute capability {capability}, this host's "
                f"{device['name']} is {device['compute_capability']}")  # fmt: skip
    return None


def _copy_out(container: str, source: str, dest: Path) -> bool:
    """Copy a directory of a buildah container (mounted read-side) to `dest`; False if it is not there."""
    mount = run(["buildah", "mount", container], f"mounting {container}", quiet=True).strip()
    try:
        path = Path(mount) / source.lstrip("/")
        if not path.is_dir():
            return False
        shutil.copytree(path, dest, symlinks=True)
        return True
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True)


def _normalise(tree: Path) -> None:
    """Modes as a COPY layer should carry them (--timestamp 0 pins the times); no links leave the tree."""
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            os.chmod(path, 0o755)
        else:
            os.chmod(path, 0o644)


def bake(captured: Path, baked: Path) -> tuple[dict[str, Any], bool]:
    """Turn one model's captured writable cache dir into its baked dir (cache/ + warm.json); a baked
    dir with the same key is kept as it is (same bytes, same layer). Returns (warm.json, reused)."""
    key = json.loads((captured / compile_cache.KEY_JSON).read_text())
    previous = baked / compile_cache.WARM_JSON
    if previous.is_file():
        data, _ = compile_cache.check_baked(baked, key)
        if data is not None:
            return data, True
    if baked.exists():
        shutil.rmtree(baked)
    baked.mkdir(parents=True)
    (captured / compile_cache.KEY_JSON).unlink()
    shutil.copytree(captured, baked / compile_cache.CACHE_SUBDIR, symlinks=True)
    _normalise(baked)
    return compile_cache.write_warm_json(baked, key), False


def warm_dockerfile(base: str, models: list[str]) -> str:
    copies = "\n".join(f"COPY {name}/ /" for name in models)
    return (f"# Compile caches, one layer per model (appliance image warm); the launcher seeds them.\n"
            f"FROM {base}\n{copies}\nLABEL {WARM_LABEL}={json.dumps(','.join(models))}\n")  # fmt: skip


def warm(catalog: Catalog, profile: Profile, work: Path, *, ref: str | None = None, timeout: float = 1200,
         quiet: bool = False) -> WarmResult:  # fmt: skip
    """Boot the cold image, capture each model's compile cache, tag `ref` as cold image + cache layers."""
    ref = ref or dockerfile.image_ref(profile.name)
    cold = cold_ref(ref)
    result = WarmResult(ref, cold)
    if not image_exists(ref):
        raise ImageError(f"{ref} is not in local storage: run appliance image build --profile {profile.name} first")
    if image_warm_models(ref):
        if not image_exists(cold):
            raise ImageError(f"{ref} is already warm and {cold} is gone: rebuild it with appliance image build")
    else:
        run(["buildah", "tag", ref, cold], f"tagging {cold}", quiet=True)
    if why := gpu_missing(profile):
        result.shipped_cold = why
        return result
    models = [s.name for s in served_models(catalog, profile)]
    keep = work / profile.name  # the baked dirs, kept between runs (see the module doc)
    with tempfile.TemporaryDirectory(prefix="appliance-warm-", dir=work) as tmp:
        captured = Path(tmp) / "captured"
        with ImageBoot(cold, Path(tmp) / "boot", profile, trace=False, devices=warm_devices(profile)) as boot:
            result.seconds_to_ready = boot.wait_ready(timeout)
            answers = read_pages(boot, catalog, profile)
            if bad := [engine for engine, a in answers.items() if a["status"] != 200]:
                raise ImageError(f"warming {cold}: no answer from {', '.join(bad)}:\n{boot.log_tail()}")
            assert boot.container is not None
            for model in models:
                if not _copy_out(boot.container, str(COMPILE_DIR / model), captured / model):
                    raise ImageError(f"warming {cold}: {COMPILE_DIR / model} was not written\n{boot.log_tail()}")
        context = Path(tmp) / "context"
        for model in models:
            baked = keep / model / WARM_ROOT.relative_to("/") / model
            data, reused = bake(captured / model, baked)
            result.models[model] = {"files": len(data["files"]), "bytes": data["bytes"], "reused": reused}
            shutil.copytree(keep / model, context / model, symlinks=True)
        (context / "Dockerfile").write_text(warm_dockerfile(cold, models))
        run(buildah_bud(context, context / "Dockerfile", ref), f"adding the compile caches to {ref}", quiet=quiet)
    _, layers = inspect_layers(ref)
    result.layers = cache_layers(layers)
    if missing := [m for m in models if m not in result.layers]:
        raise ImageError(f"{ref}: no compile-cache layer found for {', '.join(missing)}")
    return result
