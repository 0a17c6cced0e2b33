"""Stage the build context Dockerfile.offline expects (see `appliance.image.dockerfile`).

Everything in it has normalised modes (files 0644, tini 0755, directories 0755) and, except model
files linked from the store, mtime 0, so the same store, locks and code give the same layers.
Model files are hard links to the verified store when it has the canonical mode (no copy of
gigabytes; buildah's `--timestamp 0` clamps their mtimes), copies otherwise or across filesystems.
Only the files the lock lists are staged: nothing stray in the store can reach the image.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ImageError, LockError, VerifyError
from appliance.image.bases import BaseImage
from appliance.image.layout import MANIFESTS as IMAGE_MANIFESTS
from appliance.image.layout import MODELS_ROOT
from appliance.image.tools import run
from appliance.manifest import Catalog, ModelManifest, Profile
from appliance.store.lock import Lock, read_lock
from appliance.store.verify import verify_deep, verify_fast

FILE_MODE = 0o644
DIR_MODE = 0o755
EXEC_MODE = 0o755
# Extras of the appliance installed in the image when the project defines them (the run time's
# supervisord and the gateway's web stack); the core dependencies always are.
IMAGE_EXTRAS = ("runtime", "gateway")
# cuda profiles whose PaddleOCR-VL layout model has an ONNX export: ONNX Runtime's GPU build runs it
# there (appliance/runtime/layout.py). PyPI's wheel; the product image of a CPU profile stays without.
LAYOUT_GPU_EXTRA = "layout-gpu"


def image_extras(catalog: Catalog, profile: Profile) -> tuple[str, ...]:
    """The appliance extras the image of `profile` installs (those the wheel defines)."""
    from appliance.runtime.plan import gpu_layout_models

    return IMAGE_EXTRAS + ((LAYOUT_GPU_EXTRA,) if gpu_layout_models(catalog, profile) else ())


# Zip timestamps cannot predate 1980: the appliance wheel's entries get this date.
WHEEL_EPOCH = "315532800"
_LINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES}


@dataclass(frozen=True)
class StagedModel:
    name: str
    lock: Lock
    linked: int
    copied: int


def _normalise(path: Path, mode: int) -> None:
    os.chmod(path, mode)
    os.utime(path, (0, 0), follow_symlinks=False)


def _normalise_dirs(root: Path) -> None:
    """Directories under and including root: mode 0755, mtime 0 (deepest first: creating a file
    in a directory bumps its mtime)."""
    dirs = [Path(d) for d, _, _ in os.walk(root)]
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        _normalise(d, DIR_MODE)


def _place(src: Path, dst: Path, link: bool) -> bool:
    """Hard-link src to dst if allowed and possible, else copy it with normalised metadata. True if linked."""
    if link and stat.S_IMODE(src.stat().st_mode) == FILE_MODE:
        try:
            os.link(src, dst)
            return True
        except OSError as exc:
            if exc.errno not in _LINK_FALLBACK:
                raise
    shutil.copyfile(src, dst)
    _normalise(dst, FILE_MODE)
    return False


def _copy_tree(src: Path, dst: Path, patterns: tuple[str, ...] = ("*",)) -> None:
    """Copy the regular files under src matching `patterns`, normalised."""
    for pattern in patterns:
        for path in sorted(src.rglob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts:
                target = dst / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                _normalise(target, FILE_MODE)
    dst.mkdir(parents=True, exist_ok=True)
    _normalise_dirs(dst)


def stage_models(
    catalog: Catalog,
    models: list[ModelManifest],
    store: Path,
    dest: Path,
    *,
    link: bool = True,
    deep: bool = False,
) -> list[StagedModel]:
    """Verify each model in `store` against its lock, then stage dest/<name>/ as the tree its layer
    adds to the image: the locked files (nothing else) under /models/<name>, and the model's
    manifest and lock under /opt/appliance/manifests — so a model update changes only its layer."""
    staged = []
    for manifest in models:
        lock_path = catalog.lock_path(manifest.name)
        lock = read_lock(lock_path)
        if lock is None:
            raise LockError(f"{manifest.name}: no lock at {lock_path}; fetch it first")
        model_dir = store / manifest.name
        problems = verify_deep(model_dir, lock) if deep else verify_fast(model_dir, lock)
        if problems:
            raise VerifyError(problems)
        root = dest / manifest.name
        files = root / str(MODELS_ROOT).lstrip("/") / manifest.name
        linked = copied = 0
        for locked in lock.files:
            target = files / locked.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if _place(model_dir / locked.path, target, link):
                linked += 1
            else:
                copied += 1
        files.mkdir(parents=True, exist_ok=True)
        meta = root / str(IMAGE_MANIFESTS).lstrip("/")
        for src, rel in ((catalog.models_dir / f"{manifest.name}.yaml", "models"), (lock_path, "locks")):
            (meta / rel).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, meta / rel / src.name)
            _normalise(meta / rel / src.name, FILE_MODE)
        _normalise_dirs(root)
        staged.append(StagedModel(manifest.name, lock, linked, copied))
    dest.mkdir(parents=True, exist_ok=True)
    _normalise(dest, DIR_MODE)
    return staged


# --- the appliance wheel and its wheelhouse ------------------------------------------------------


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def build_appliance_wheel(project: Path, dest: Path, *, quiet: bool = True) -> Path:
    """The appliance's own wheel, built from a clean copy of the checkout (no build/ or egg-info
    left in it), with fixed zip timestamps."""
    if not (project / "pyproject.toml").is_file() or not (project / "appliance").is_dir():
        raise ImageError(f"{project}: not an appliance checkout (pyproject.toml + appliance/); set APPLIANCE_ROOT")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="appliance-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copyfile(project / "pyproject.toml", src / "pyproject.toml")
        _copy_tree(project / "appliance", src / "appliance")
        env = os.environ | {"SOURCE_DATE_EPOCH": WHEEL_EPOCH}
        cmd = _pip("wheel", "--no-deps", "--wheel-dir", str(dest), str(src))
        run(cmd, "building the appliance wheel", quiet=quiet, env=env)
    wheels = sorted(dest.glob("ocr_appliance-*.whl"))
    if len(wheels) != 1:
        raise ImageError(f"expected one appliance wheel in {dest}, found {[w.name for w in wheels]}")
    _normalise(wheels[0], FILE_MODE)
    return wheels[0]


def wheel_extras(wheel: Path) -> list[str]:
    """`Provides-Extra` of a wheel's METADATA."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Provides-Extra:")]


def _requirement_of(wheel_name: str) -> str:
    name, version = wheel_name.split("-")[:2]
    return f"{name.replace('_', '-').lower()}=={version}"


def download_wheelhouse(
    appliance_wheel: Path,
    base: BaseImage,
    dest: Path,
    *,
    constraints: Path | None = None,
    quiet: bool = True,
    wanted: tuple[str, ...] = IMAGE_EXTRAS,
) -> list[str]:
    """Binary wheels of the appliance's run-time dependencies (with the `wanted` extras the wheel
    defines) for the base's Python and platform, plus `requirements.txt` pinning them; the appliance
    wheel itself is not in it."""
    dest.mkdir(parents=True, exist_ok=True)
    extras = [e for e in wanted if e in wheel_extras(appliance_wheel)]
    requirement = f"{appliance_wheel}[{','.join(extras)}]" if extras else str(appliance_wheel)
    cmd = _pip(
        "download",
        "--dest", str(dest),
        "--only-binary=:all:",
        "--python-version", base.python_version,
        "--implementation", "cp",
        "--abi", base.python_tag,
    )  # fmt: skip
    for platform in base.platforms:
        cmd += ["--platform", platform]
    if constraints is not None and constraints.is_file():
        cmd += ["--constraint", str(constraints)]
    run([*cmd, requirement], f"downloading the appliance's wheels for Python {base.python_version}", quiet=quiet)
    (dest / appliance_wheel.name).unlink(missing_ok=True)
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    pins = sorted(_requirement_of(w) for w in wheels)
    (dest / "requirements.txt").write_text("".join(f"{p}\n" for p in pins))
    for path in dest.iterdir():
        _normalise(path, FILE_MODE)
    _normalise(dest, DIR_MODE)
    return pins


# --- tini, manifests, supervisord.conf -----------------------------------------------------------


def fetch_tini(dest: Path, *, quiet: bool = True) -> Path:
    """Debian's static tini (`/usr/bin/tini-static` of the `tini` package), via `apt-get download`:
    the official vLLM base may lack tini and the image build has no network."""
    with tempfile.TemporaryDirectory(prefix="appliance-tini-") as tmp:
        work = Path(tmp)
        run(["apt-get", "download", "tini"], "apt-get download tini (apt-get update first?)", quiet=True, cwd=work)
        debs = sorted(work.glob("tini_*.deb"))
        if not debs:
            raise ImageError("apt-get download tini left no tini_*.deb")
        run(["dpkg-deb", "-x", str(debs[-1]), str(work / "x")], "extracting tini", quiet=quiet)
        shutil.copyfile(work / "x/usr/bin/tini-static", dest)
    _normalise(dest, EXEC_MODE)
    return dest


def render_supervisord_conf(catalog: Catalog, profile: Profile) -> str:
    """The run time's supervisord.conf for `profile`, models under /models (baked into the code layer)."""
    from appliance.runtime.supervisor import render_supervisord_conf as render

    return render(catalog, profile)


def stage_code(catalog: Catalog, profile: Profile, dest: Path, wheel: Path, supervisord_conf: str) -> Path:
    """code/: the appliance wheel, manifests/profiles/<profile>.yaml and supervisord.conf."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(wheel, dest / wheel.name)
    _normalise(dest / wheel.name, FILE_MODE)
    # Only this profile: the models' manifests and locks travel in their own layers.
    profiles = dest / "manifests" / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(catalog.profiles_dir / f"{profile.name}.yaml", profiles / f"{profile.name}.yaml")
    _normalise(profiles / f"{profile.name}.yaml", FILE_MODE)
    (dest / "supervisord.conf").write_text(supervisord_conf)
    _normalise(dest / "supervisord.conf", FILE_MODE)
    _normalise_dirs(dest)
    return dest
