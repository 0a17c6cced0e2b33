"""Delta bundles: ship only the layers the site does not have, rebuild the exact tar there.

`appliance image save --since OLD/bundle.json` saves the new image as usual, then describes its tar
as a recipe (`delta.json`): the archive cut into byte segments, each either literal bytes (tar
headers, manifest.json, the image config, padding: a few KB) or one layer's bytes, named by its diff
id and found either in the old bundle's tar or in `layers/<hex>.tar` of the delta. The recipe
copies bytes, so nothing about tar formats has to be re-derived: the rebuilt file is byte-identical.

`appliance bundle apply OLD_DIST DELTA_DIST --key PUB` (isolated host) checks the delta's signed
manifest and that OLD_DIST is, by its own signed manifest, the base the recipe names; then writes
the tar to a temp file, checking every layer against its diff id as it is copied and the whole file
against the signed sha256, and renames it into DELTA_DIST only when all matched. DELTA_DIST is
then a complete bundle (`bundle verify` and `docker load` as usual).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from appliance.errors import BundleError, SigningError
from appliance.image import release
from appliance.image.archive import layer_members
from appliance.store.hashing import sha256_file
from appliance.store.lock import write_atomic

DELTA_FILE = "delta.json"
LAYERS_DIR = "layers"
DELTA_VERSION = 1
CHUNK = 1 << 20


@dataclass(frozen=True)
class LayerSpan:
    diff_id: str
    offset: int
    size: int


def layer_spans(archive: Path) -> list[LayerSpan]:
    """Where each layer's bytes lie in a docker-archive (header-only reads: seeks over the data)."""
    with tarfile.open(archive, mode="r:") as outer:
        members = layer_members(outer)
        handle = outer.extractfile("manifest.json")
        assert handle is not None
        config_file = outer.extractfile(json.load(handle)[0]["Config"])
        if config_file is None:
            raise tarfile.ReadError("the image config is not a file")
        diff_ids = json.load(config_file)["rootfs"]["diff_ids"]
    if len(diff_ids) != len(members):
        raise tarfile.ReadError(f"{len(members)} layers, the image config names {len(diff_ids)}")
    return [LayerSpan(d, m.offset_data, m.size) for d, m in zip(diff_ids, members, strict=True)]


def recipe(archive: Path) -> list[list[Any]]:
    """The archive as segments: ["bytes", base64] or ["layer", diff id, size], in file order."""
    spans = sorted({s.offset: s for s in layer_spans(archive)}.values(), key=lambda s: s.offset)
    segments: list[list[Any]] = []
    position = 0
    with open(archive, "rb") as handle:
        for span in spans:
            handle.seek(position)
            if span.offset > position:
                segments.append(["bytes", base64.b64encode(handle.read(span.offset - position)).decode()])
            segments.append(["layer", span.diff_id, span.size])
            position = span.offset + span.size
        handle.seek(position)
        if tail := handle.read():
            segments.append(["bytes", base64.b64encode(tail).decode()])
    return segments


def make_delta(full: Path, old_bundle: Path, out: Path) -> dict[str, Any]:
    """From a saved bundle in `full` (tar, bundle.json, SBOM, signed manifest) and the bundle.json of
    the bundle the site has, write the delta into `out` (may be `full`: its tar is then removed)."""
    bundle = json.loads((full / "bundle.json").read_text())
    old = json.loads(old_bundle.read_text())
    archive = full / bundle["archive"]["file"]
    have = {layer["diff_id"] for layer in old["layers"]}
    segments = recipe(archive)
    spans = {s.diff_id: s for s in layer_spans(archive)}
    (out / LAYERS_DIR).mkdir(parents=True, exist_ok=True)
    shipped = []
    with open(archive, "rb") as source:
        for _, diff_id, _size in (s for s in segments if s[0] == "layer"):
            if diff_id in have or diff_id in shipped:
                continue
            span = spans[diff_id]
            target = out / LAYERS_DIR / f"{diff_id.removeprefix('sha256:')}.tar"
            with open(target.with_suffix(".partial"), "wb") as sink:
                _copy(source, span.offset, span.size, sink, diff_id, "new image")
            os.replace(target.with_suffix(".partial"), target)
            shipped.append(diff_id)
    delta = {
        "delta_version": DELTA_VERSION,
        "base": {k: old[k] for k in ("image", "image_id")} | {"archive": old["archive"]},
        "archive": bundle["archive"],
        "shipped_layers": shipped,
        "segments": segments,
    }
    write_atomic(out / DELTA_FILE, json.dumps(delta, indent=1, sort_keys=True) + "\n")
    if out.resolve() != full.resolve():
        for name in ("bundle.json", "SHA256SUMS", release.ENVELOPE, "sbom.cdx.json"):
            if (full / name).is_file():
                shutil.copyfile(full / name, out / name)
    else:
        archive.unlink()
    with open(out / "SHA256SUMS", "a") as sums:  # the delta's own files too (the tar's line stays: apply makes it)
        for name in [DELTA_FILE, *(f"{LAYERS_DIR}/{d.removeprefix('sha256:')}.tar" for d in shipped)]:
            sums.write(f"{sha256_file(out / name)}  {name}\n")
    return delta


def _copy(source: BinaryIO, offset: int, size: int, sink: BinaryIO, diff_id: str | None, where: str) -> None:
    """Copy one layer's bytes; with its diff id, refuse them unless they hash to it."""
    sha = hashlib.sha256()
    source.seek(offset)
    left = size
    while left:
        chunk = source.read(min(CHUNK, left))
        if not chunk:
            break
        if diff_id is not None:
            sha.update(chunk)
        sink.write(chunk)
        left -= len(chunk)
    if left or (diff_id is not None and f"sha256:{sha.hexdigest()}" != diff_id):
        raise BundleError([f"layer {diff_id or ''} of the {where} is damaged (its bytes do not hash to its diff id)"])


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


class _HashingWriter:
    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)


def _statement(dist: Path, key: Path, what: str) -> dict[str, Any]:
    try:
        return release.signed_statement(dist, key)
    except SigningError as exc:
        raise BundleError([f"{what} {dist}: {exc}"]) from None


def apply(old_dist: Path, delta_dist: Path, key: Path, installed: Path | None = None) -> Path:
    """Rebuild the new tar into delta_dist from the old bundle and the delta; returns its path. Nothing
    is written unless the delta is signed by `key`, its base is the bundle in old_dist, and the result
    has the signed sha256."""
    new = _statement(delta_dist, key, "delta")
    problems = release.file_problems(new, delta_dist) + release.replay_problems(new, installed)
    try:
        delta = json.loads((delta_dist / DELTA_FILE).read_text())
        segments, base = delta["segments"], delta["base"]["archive"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError([*problems, f"{DELTA_FILE}: missing or unreadable ({exc})"]) from None
    if delta["archive"]["sha256"] != new["archive"]["sha256"]:
        rebuilds = delta["archive"]["sha256"][:16]
        problems.append(f"{DELTA_FILE}: rebuilds {rebuilds}, the signed manifest names another tar")
    old = _statement(old_dist, key, "base")
    if old["archive"]["sha256"] != base["sha256"]:
        problems.append(
            f"{old_dist}: holds {old['image']} (tar sha256 {old['archive']['sha256'][:16]}), the delta's base is "
            f"{delta['base']['image']} (tar sha256 {base['sha256'][:16]}): another base"
        )
    old_tar = old_dist / old["archive"]["file"]
    if not old_tar.is_file() or old_tar.stat().st_size != old["archive"]["size"]:
        problems.append(f"{old_tar}: missing or not {old['archive']['size']} bytes (the base's tar is damaged)")
    if int(new["created"]) < int(old["created"]):
        problems.append(f"replay: the delta's release stamp {new['created']} is older than its base's {old['created']}")
    if problems:
        raise BundleError(problems)
    target = delta_dist / new["archive"]["file"]
    partial = delta_dist / f".{target.name}.partial"
    try:
        base_spans = {s.diff_id: s for s in layer_spans(old_tar)}
    except (tarfile.TarError, OSError, KeyError, ValueError) as exc:
        raise BundleError([f"{old_tar}: unreadable as a docker-archive ({exc}): the base is damaged"]) from None
    try:
        # One hash per byte on the way: the whole file's, against the signed sha256. Only when it
        # differs are the layers hashed one by one, to name what is damaged.
        with open(partial, "wb") as raw, open(old_tar, "rb") as source:
            sink = _HashingWriter(raw)
            for segment in segments:
                _write_segment(segment, sink, source, base_spans, delta_dist, check=False)  # type: ignore[arg-type]
            raw.flush()
            os.fsync(raw.fileno())
        sha, size = sink.sha.hexdigest(), sink.size
        if (sha, size) != (new["archive"]["sha256"], new["archive"]["size"]):
            with open(old_tar, "rb") as source:
                for segment in segments:  # raises, naming the first damaged layer
                    _write_segment(segment, _Discard(), source, base_spans, delta_dist, check=True)  # type: ignore[arg-type]
            want = new["archive"]["sha256"]
            raise BundleError(
                [f"the rebuilt tar has sha256 {sha} ({size} bytes), the signed manifest says {want} (the recipe "
                 f"{DELTA_FILE} is damaged: every layer is intact)"]
            )  # fmt: skip
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _write_segment(
    segment: list[Any], sink: BinaryIO, source: BinaryIO, base: dict[str, LayerSpan], delta_dist: Path, check: bool
) -> None:
    if segment[0] == "bytes":
        sink.write(base64.b64decode(segment[1]))
        return
    _, diff_id, size = segment
    check_id = diff_id if check else None
    shipped = delta_dist / LAYERS_DIR / f"{diff_id.removeprefix('sha256:')}.tar"
    if shipped.is_file():
        with open(shipped, "rb") as handle:
            _copy(handle, 0, size, sink, check_id, "delta")
    elif diff_id in base:
        _copy(source, base[diff_id].offset, size, sink, check_id, "base")
    else:
        raise BundleError([f"layer {diff_id[:19]} is neither in the delta nor in the base"])
