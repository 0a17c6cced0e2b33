"""The signed bundle manifest (`dist/bundle.dsse.json`) and the replay guard of the isolated host.

SHA256SUMS and bundle.json catch a damaged copy; whoever can rewrite the tar can rewrite them too.
The manifest signed with the offline key names everything else: the tar's size and sha256, every
layer's digest, each model's layer, lock digest and commit, and the sha256 of bundle.json and of the
SBOM. It also carries a release stamp: the isolated host keeps the stamp of what it installed
(`installed.json` in a state directory) and refuses an older signed bundle presented as newer.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from appliance import constants
from appliance.errors import SigningError
from appliance.image import signing
from appliance.store.hashing import sha256_file
from appliance.store.lock import write_atomic

ENVELOPE = "bundle.dsse.json"
STATE_FILE = "installed.json"
MANIFEST_VERSION = 1
STAMP_ENV = "APPLIANCE_RELEASE_STAMP"


def release_stamp() -> int:
    """Seconds since the epoch that only grow from one release to the next, and that the same
    checkout gives again: $APPLIANCE_RELEASE_STAMP, else the commit time of the checkout's HEAD
    (locks and code are committed), else now. Image timestamps cannot serve: builds use --timestamp 0."""
    if value := os.environ.get(STAMP_ENV):
        return int(value)
    try:
        done = subprocess.run(
            ["git", "-C", str(constants.project_root()), "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip().isdigit():
            return int(done.stdout.strip())
    except OSError:
        pass
    return int(time.time())


def statement(bundle: dict[str, Any], files: dict[str, str], stamp: int) -> dict[str, Any]:
    """What the key signs: bundle.json's identity and digests, and the sha256 of the side files."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "created": stamp,
        "image": bundle["image"],
        "image_id": bundle["image_id"],
        "profile": bundle["profile"],
        "archive": {k: bundle["archive"][k] for k in ("file", "size", "sha256")},
        "layers": [{"diff_id": la["diff_id"], "size": la["size"]} for la in bundle["layers"]],
        "models": {
            name: {k: info[k] for k in ("layer", "lock_digest", "commit", "cache_layer") if k in info}
            for name, info in bundle["models"].items()
        },
        "files": files,
    }


def sign_dist(dist: Path, key: Path, stamp: int, side_files: list[str]) -> dict[str, Any]:
    """Sign the bundle in dist: write bundle.dsse.json, and list every file in SHA256SUMS."""
    private = signing.load_private(key)
    bundle = json.loads((dist / "bundle.json").read_text())
    files = {name: sha256_file(dist / name) for name in ["bundle.json", *side_files]}
    signed = statement(bundle, files, stamp)
    write_atomic(dist / ENVELOPE, json.dumps(signing.sign(signed, private), indent=2, sort_keys=True) + "\n")
    sums = [f"{bundle['archive']['sha256']}  {bundle['archive']['file']}"]
    sums += [f"{sha}  {name}" for name, sha in files.items()]
    sums.append(f"{sha256_file(dist / ENVELOPE)}  {ENVELOPE}")
    write_atomic(dist / "SHA256SUMS", "\n".join(sums) + "\n")
    return signed


def signed_statement(dist: Path, key: Path) -> dict[str, Any]:
    """The statement of dist's envelope, if signed by `key`; SigningError names an unsigned bundle,
    another key, or a manifest altered after signing."""
    public = signing.load_public(key)
    path = dist / ENVELOPE
    if not path.is_file():
        raise SigningError(f"unsigned bundle: no {ENVELOPE} in {dist} (save it with `appliance image save --sign KEY`)")
    try:
        envelope = json.loads(path.read_text())
    except ValueError as exc:
        raise SigningError(f"{ENVELOPE}: not JSON ({exc})") from None
    try:
        return signing.open_envelope(envelope, public)
    except SigningError as exc:
        raise SigningError(f"{ENVELOPE}: {exc}") from None


def file_problems(signed: dict[str, Any], dist: Path) -> list[str]:
    """The side files (bundle.json, the SBOM) against the signed manifest."""
    problems = []
    for name, sha in sorted(signed.get("files", {}).items()):
        path = dist / name
        if not path.is_file():
            problems.append(f"{name}: missing in {dist}, the signed manifest lists it")
        elif (actual := sha256_file(path)) != sha:
            problems.append(f"{name}: sha256 {actual}, the signed manifest says {sha} (altered after signing)")
    return problems


def archive_problems(signed: dict[str, Any], name: str, size: int, sha: str) -> list[str]:
    want = signed["archive"]
    problems = []
    if name != want["file"]:
        problems.append(f"{name}: the signed manifest describes {want['file']}")
    if size != want["size"] or sha != want["sha256"]:
        problems.append(
            f"{name}: sha256 {sha} ({size} bytes), the signed manifest says {want['sha256']} ({want['size']} bytes): "
            "the tar is not the one that was signed"
        )
    return problems


def replay_problems(signed: dict[str, Any], installed: Path | None) -> list[str]:
    """An older signed bundle than the installed one (or the same stamp with other content) is a replay.
    A state directory or file not there yet is a first install."""
    if installed is None:
        return []
    state_path = installed / STATE_FILE
    if not state_path.is_file():
        return []
    try:
        state = json.loads(state_path.read_text())
        stamp, sha = int(state["created"]), str(state["archive_sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{state_path}: unreadable ({type(exc).__name__}: {exc}); refusing rather than guessing"]
    mine = int(signed["created"])
    if mine < stamp:
        return [
            f"replay: this bundle's release stamp {mine} is older than the installed one ({stamp}, "
            f"{state.get('image')}, tar sha256 {sha[:16]}); {state_path}"
        ]
    if mine == stamp and signed["archive"]["sha256"] != sha:
        return [f"replay: release stamp {mine} equals the installed one but the tar differs ({state_path})"]
    return []


def record_installed(installed: Path, signed: dict[str, Any], key_id: str) -> Path:
    installed.mkdir(parents=True, exist_ok=True)
    state = {
        "created": signed["created"],
        "archive_sha256": signed["archive"]["sha256"],
        "image": signed["image"],
        "image_id": signed["image_id"],
        "key_id": key_id,
    }
    path = installed / STATE_FILE
    write_atomic(path, json.dumps(state, indent=2, sort_keys=True) + "\n")
    return path
