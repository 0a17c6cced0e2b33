"""`dist/sbom.cdx.json`: a CycloneDX SBOM of the saved image, built with cyclonedx-python-lib.

It describes the image, not the build host: the Python distributions are read from the saved
archive's layers (`*.dist-info/METADATA` of every environment: the base's vLLM env, the appliance
venv, a system Python), the Debian packages from the image's `/var/lib/dpkg/status`, and every
model from its lock (source, resolved commit, licence, each file's sha256). The same archive and
locks give the same bytes: the serial number derives from the tar's sha256, the time from the
release stamp.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from appliance.image.archive import read_image_files
from appliance.manifest import Catalog
from appliance.store.lock import read_lock

SBOM_FILE = "sbom.cdx.json"
_METADATA = re.compile(r"(?P<env>.+?)/lib/python[\d.]+/(site|dist)-packages/[^/]+\.dist-info/METADATA")
_DPKG_STATUS = "var/lib/dpkg/status"


def _wanted(path: str) -> bool:
    return path == _DPKG_STATUS or (path.endswith("/METADATA") and _METADATA.fullmatch(path) is not None)


def _licenses(value: str | None) -> list[Any]:
    if not value or value.strip().upper() in ("", "UNKNOWN"):
        return []
    return [LicenseFactory().make_from_string(value.strip().splitlines()[0][:200])]


def python_components(files: dict[str, bytes]) -> list[Component]:
    components = []
    for path, data in sorted(files.items()):
        match = _METADATA.fullmatch(path)
        if match is None:
            continue
        meta = HeaderParser().parsestr(data.decode("utf-8", "replace"))
        name, version = meta.get("Name"), meta.get("Version")
        if not name or not version:
            continue
        env = "/" + match["env"]
        components.append(
            Component(
                name=name,
                version=version,
                bom_ref=f"pypi:{env}:{name.lower()}@{version}",
                purl=PackageURL("pypi", name=name.lower(), version=version),
                licenses=_licenses(meta.get("License-Expression") or meta.get("License")),
                properties=[Property(name="appliance:environment", value=env)],
            )
        )
    return components


def debian_components(status: bytes | None) -> list[Component]:
    if not status:
        return []
    components = []
    for paragraph in status.decode("utf-8", "replace").split("\n\n"):
        fields = dict(line.split(":", 1) for line in paragraph.splitlines() if ":" in line and not line.startswith(" "))
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        name, version, arch = fields.get("Package"), fields.get("Version"), fields.get("Architecture")
        if not name or not version or not fields.get("Status", "").endswith(" installed"):
            continue
        qualifiers = {"arch": arch} if arch else None
        components.append(
            Component(
                name=name,
                version=version,
                bom_ref=f"deb:{name}:{arch}@{version}",
                purl=PackageURL("deb", namespace="debian", name=name, version=version, qualifiers=qualifiers),
            )
        )
    return components


def model_components(catalog: Catalog, profile: str, layers: dict[str, str]) -> list[Component]:
    """Every model of the profile from its lock; `layers` maps a model to its layer diff id."""
    components = []
    for manifest in catalog.profile_models(profile):
        lock = read_lock(catalog.lock_path(manifest.name))
        if lock is None:
            continue
        source = manifest.source
        purl = None
        if source.kind == "hf":
            owner, repo = source.location.split("/", 1)
            purl = PackageURL("huggingface", namespace=owner, name=repo, version=lock.commit)
        files = [
            Component(
                type=ComponentType.FILE,
                name=f.path,
                bom_ref=f"model:{manifest.name}:{f.path}",
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=f.sha256)],
                properties=[Property(name="appliance:size", value=str(f.size))],
            )
            for f in lock.files
        ]
        properties = [
            Property(name="appliance:source", value=str(source)),
            Property(name="appliance:lock_digest", value=lock.digest),
        ]
        if manifest.name in layers:
            properties.append(Property(name="appliance:layer", value=layers[manifest.name]))
        components.append(
            Component(
                type=ComponentType.MACHINE_LEARNING_MODEL,
                name=manifest.name,
                version=lock.commit,
                bom_ref=f"model:{manifest.name}@{lock.commit}",
                purl=purl,
                licenses=_licenses(manifest.license),
                properties=properties,
                components=files,
            )
        )
    return components


def build_sbom(archive: Path, bundle: dict[str, Any], catalog: Catalog, stamp: int) -> str:
    """The SBOM of a saved archive described by `bundle` (bundle.json's data), as JSON text."""
    files = read_image_files(archive, _wanted)
    sha = bundle["archive"]["sha256"]
    image = Component(
        type=ComponentType.CONTAINER,
        name=bundle["image"],
        version=bundle["image_id"],
        bom_ref=f"image:{bundle['image_id']}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha)],
        properties=[Property(name="appliance:profile", value=bundle["profile"])],
    )
    layers = {m: info["layer"] for m, info in bundle["models"].items()}
    components = [
        *python_components(files),
        *debian_components(files.get(_DPKG_STATUS)),
        *model_components(catalog, bundle["profile"], layers),
    ]
    bom = Bom(
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"urn:sha256:{sha}"),
        metadata=BomMetaData(component=image, timestamp=datetime.fromtimestamp(stamp, UTC)),
        components=components,
    )
    bom.register_dependency(image, components)
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"
