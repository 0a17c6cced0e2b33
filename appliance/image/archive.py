"""Reading docker-archive tarballs in one streaming pass, and mapping an image's layers to their roles.

A docker-archive (`podman save --format docker-archive`, `docker save`) holds `manifest.json`
(config file name, tags, layer file names in order), the image config (`<id>.json`: history and
`rootfs.diff_ids`, the sha256 of each uncompressed layer) and one tar per layer. Docker Engine 25
and later save an OCI image layout instead (`index.json`, `oci-layout`, `blobs/sha256/<hex>`) with
the same `manifest.json` beside it, whose config and layers are blobs without a `.json` suffix:
small blobs are kept and parsed too, so both shapes read the same way. One pass over
the tarball gives the sha256 of the whole file and of every member, so `bundle verify` reads a
multi-gigabyte archive exactly once.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from appliance.image.layout import MODELS_LABEL, TINI, WARM_LABEL

CHUNK = 1 << 20
_JSON_LIMIT = 16 << 20
_BLOB_LIMIT = 4 << 20  # an OCI-layout config blob: kept if it parses as JSON (layers are larger or not JSON)


class _HashingReader:
    """A read-only stream that hashes every byte read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


@dataclass
class ArchiveScan:
    path: Path
    size: int = 0
    sha256: str = ""
    members: dict[str, tuple[str, int]] = field(default_factory=dict)  # name → (sha256 hex, size)
    links: dict[str, str] = field(default_factory=dict)  # symlink name → target member
    json: dict[str, Any] = field(default_factory=dict)  # small *.json members, parsed
    error: str | None = None  # the tar stream ended early or is not a tar

    def resolve(self, name: str) -> str:
        for _ in range(8):
            if name not in self.links:
                return name
            name = self.links[name]
        return name

    @property
    def manifest(self) -> dict[str, Any] | None:
        data = self.json.get("manifest.json")
        return data[0] if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict) else None

    @property
    def config_name(self) -> str | None:
        manifest = self.manifest
        return manifest.get("Config") if manifest else None

    @property
    def config(self) -> dict[str, Any] | None:
        name = self.config_name
        return self.json.get(self.resolve(name)) if name else None


def scan_archive(path: Path) -> ArchiveScan:
    """sha256 and size of the file and of each member, and the JSON members, in one pass."""
    scan = ArchiveScan(path)
    with open(path, "rb") as raw:
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    if member.issym():
                        scan.links[member.name] = posixpath.normpath(
                            posixpath.join(posixpath.dirname(member.name), member.linkname)
                        )
                    elif member.isfile():
                        _scan_member(scan, tar, member)
        except (tarfile.TarError, EOFError, OSError) as exc:
            scan.error = str(exc) or type(exc).__name__
        reader.drain()
    scan.size, scan.sha256 = reader.size, reader.sha.hexdigest()
    return scan


def _scan_member(scan: ArchiveScan, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    handle = tar.extractfile(member)
    assert handle is not None
    sha, size = hashlib.sha256(), 0
    blob = member.name.startswith("blobs/")
    keep = (member.name.endswith(".json") and member.size <= _JSON_LIMIT) or (blob and member.size <= _BLOB_LIMIT)
    parts: list[bytes] = []
    while chunk := handle.read(CHUNK):
        sha.update(chunk)
        size += len(chunk)
        if keep:
            parts.append(chunk)
    if size != member.size:
        raise EOFError(f"{member.name}: {size} of {member.size} bytes")
    scan.members[member.name] = (sha.hexdigest(), size)
    if keep:
        try:
            scan.json[member.name] = json.loads(b"".join(parts))
        except ValueError:
            if not blob:  # a small layer blob is not JSON, and not an error
                scan.json[member.name] = None


# --- layers and their roles ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    index: int
    diff_id: str
    created_by: str
    role: str  # base | setup | model | deps | code | cache (a model's compile cache) | other
    model: str | None = None
    size: int | None = None  # uncompressed bytes (from an archive)

    def to_dict(self) -> dict[str, Any]:
        data = {"index": self.index, "diff_id": self.diff_id, "role": self.role, "size": self.size}
        if self.model:
            data["model"] = self.model
        data["created_by"] = self.created_by
        return data


def labels_of(config: dict[str, Any]) -> dict[str, str]:
    return (config.get("config") or config.get("Config") or {}).get("Labels") or {}


def models_of(config: dict[str, Any]) -> list[str]:
    """The model names Dockerfile.offline put in its label, in layer order."""
    return [m for m in labels_of(config).get(MODELS_LABEL, "").split(",") if m]


def warm_of(config: dict[str, Any]) -> list[str]:
    """The models whose compile-cache layers `appliance image warm` added, in layer order."""
    return [m for m in labels_of(config).get(WARM_LABEL, "").split(",") if m]


def layers_of(
    diff_ids: list[str], history: list[dict[str, Any]], models: list[str], warm: list[str] | None = None
) -> list[Layer]:
    """Name each layer's role in Dockerfile.offline, whose last layers are always: tini, the user
    (setup), one per model in label order, deps, code — then, in a warmed image, one compile-cache
    layer per model of `warm`; all before them come from the base. When the history is there
    (buildah, a saved archive) it must agree: the first setup layer is tini's."""
    warm = warm or []
    made = [h.get("created_by", "") for h in history if not h.get("empty_layer")]
    if len(made) != len(diff_ids):  # `docker image inspect` has no history; squashed images
        made = [""] * len(diff_ids)
    first_ours = len(diff_ids) - 4 - len(models) - len(warm)
    roles: list[tuple[str, str | None]] = [("other", None)] * len(diff_ids)
    if models and first_ours >= 0 and (not any(made) or str(TINI) in made[first_ours]):
        roles = (
            [("base", None)] * first_ours
            + [("setup", None)] * 2
            + [("model", m) for m in models]
            + [("deps", None), ("code", None)]
            + [("cache", m) for m in warm]
        )
    return [
        Layer(index, diff_id, created_by.strip(), role, model)
        for index, (diff_id, created_by, (role, model)) in enumerate(zip(diff_ids, made, roles, strict=True))
    ]


def model_layers(layers: list[Layer]) -> dict[str, Layer]:
    return {layer.model: layer for layer in layers if layer.model and layer.role == "model"}


def cache_layers(layers: list[Layer]) -> dict[str, Layer]:
    """Each warmed model's compile-cache layer."""
    return {layer.model: layer for layer in layers if layer.model and layer.role == "cache"}


# --- reading files out of the image's layers -------------------------------------------------------


def layer_members(outer: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The layer members of an open docker-archive in image order (manifest.json's `Layers`)."""
    handle = outer.extractfile("manifest.json")
    if handle is None:
        raise tarfile.ReadError("manifest.json is not a file")
    manifest = json.load(handle)
    by_name = {m.name: m for m in outer.getmembers()}
    members = []
    for name in manifest[0]["Layers"]:
        member = by_name.get(name)
        for _ in range(8):  # OCI-shaped archives link legacy names into blobs/
            if member is None or not member.issym():
                break
            member = by_name.get(posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname)))
        if member is None or not member.isfile():
            raise tarfile.ReadError(f"layer {name} is not in the archive")
        members.append(member)
    return members


def read_image_files(path: Path, want: Callable[[str], bool]) -> dict[str, bytes]:
    """The final content of the image files whose path (no leading /) `want` selects: layers applied
    in order, later files and whiteouts (`.wh.<name>`) replacing earlier ones. Seeks over file data,
    so only the wanted files and the tar headers are read, not the layers' gigabytes."""
    files: dict[str, bytes] = {}
    with tarfile.open(path, mode="r:") as outer:
        for member in layer_members(outer):
            layer_file = outer.extractfile(member)
            assert layer_file is not None
            with tarfile.open(fileobj=layer_file, mode="r:") as layer:
                for entry in layer:
                    name = posixpath.normpath(entry.name.lstrip("/")).removeprefix("./")
                    head, base = posixpath.split(name)
                    if base == ".wh..wh..opq":  # opaque directory: drop what lower layers had in it
                        files = {k: v for k, v in files.items() if not k.startswith(head + "/")}
                    elif base.startswith(".wh."):
                        gone = posixpath.join(head, base[4:])
                        files = {k: v for k, v in files.items() if k != gone and not k.startswith(gone + "/")}
                    elif entry.isfile() and want(name):
                        data = layer.extractfile(entry)
                        assert data is not None
                        files[name] = data.read()
    return files
