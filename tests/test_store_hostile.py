"""Adversarial inputs to the store, through the CLI: hostile tar and directory sources, locks and
manifests edited by hand, tampered stores, a full disk mid-file. Each case must be refused with one
line naming the file and the problem, leaving the good store and lock as they were (`Scene.refused`)."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import tarfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.store.sources.base import ModelSource
from tests.conftest import ManifestDir, make_files
from tests.store_scene import BODY, GOOD, Scene


@pytest.fixture
def scene(tmp_path: Path, manifests: ManifestDir) -> Scene:
    return Scene(tmp_path, manifests)


# --- tar sources ------------------------------------------------------------------------------

Member = tuple[str, bytes] | tarfile.TarInfo


def _tar(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _good(*extra: Member) -> list[Member]:
    return [*GOOD.items(), *extra]


NFC, NFD = unicodedata.normalize("NFC", "café.json"), unicodedata.normalize("NFD", "café.json")
TAR_CASES: dict[str, tuple[Callable[[Path], list[Member]], str]] = {
    # defect: the last of two same-named members used to win silently
    "duplicate member": (lambda _: _good(("config.json", b'{"evil": 1}\n')), r"'config\.json'.*listed twice"),
    "duplicate after ./": (lambda _: _good(("./config.json", b"{}")), r"config\.json.*listed twice"),
    "unicode twins": (lambda _: _good((NFC, b"1"), (NFD, b"2")), r"Unicode twin"),
    "symlink member": (lambda _: _good(_special("link", tarfile.SYMTYPE, "/etc/passwd")), r"'link'.*link or special"),
    "hard link member": (lambda _: _good(_special("hard", tarfile.LNKTYPE, "config.json")), r"'hard'.*link or special"),
    "fifo member": (lambda _: _good(_special("fifo", tarfile.FIFOTYPE)), r"'fifo'.*link or special"),
    "device member": (lambda _: _good(_special("null", tarfile.CHRTYPE)), r"'null'.*link or special"),
    "dot-dot member": (lambda _: _good(("../escaped.json", b"x")), r"'\.\./escaped\.json'.*'\.\.'"),
    "nested dot-dot": (lambda _: _good(("weights/../../escaped", b"x")), r"escaped.*'\.\.'"),
    "absolute member": (lambda root: _good((f"{root}/escaped.json", b"x")), r"escaped\.json.*absolute"),
    "name over 255 bytes": (lambda _: _good(("a" * 300 + ".json", b"x")), r"aaaa.*too long"),
    "control character": (lambda _: _good(("bad\nname.json", b"x")), r"control character"),
    "backslash": (lambda _: _good(("weights\\x.bin", b"x")), r"backslash"),
    "file and folder": (lambda _: _good(("config.json/inner", b"x")), r"config\.json.*both a file and a folder"),
    "member then folder of that name": (
        lambda _: [("weights", b"x"), _special("weights", tarfile.DIRTYPE), ("weights/a", b"y")],
        r"weights.*both a file and a folder",
    ),
}


@pytest.mark.parametrize("case", list(TAR_CASES))
def test_hostile_tar_refused(scene: Scene, case: str) -> None:
    members, match = TAR_CASES[case]
    archive = _tar(scene.root / "bad.tar", members(scene.root))
    scene.use(f"tar:{archive}")
    scene.refused("fetch", "m", match=match)
    assert not (scene.root / "escaped.json").exists()


def test_wrapped_tar_with_hostile_member_not_repaired(scene: Scene) -> None:
    """With a single top folder stripped, `../m/x` must not become `m/x`: refused, not repaired."""
    archive = _tar(scene.root / "bad.tar", [("m/config.json", b"{}"), ("../m/tokenizer.json", b"x")])
    scene.use(f"tar:{archive}")
    scene.refused("fetch", "m", match=r"'\.\./m/tokenizer\.json'")


@pytest.mark.parametrize(
    ("case", "match"),
    [("truncated", r"cannot read tar:.*bad\.tar"),
     ("not a tar", r"cannot read tar:.*bad\.tar: file could not be opened successfully$"),
     ("a folder", r"cannot read tar:.*bad\.tar"), ("missing", r"tar:.*bad\.tar does not exist"),
     ("empty", r"no file of tar:.*bad\.tar matches")],
)  # fmt: skip
def test_broken_tar_refused(scene: Scene, case: str, match: str) -> None:
    path = scene.root / "bad.tar"
    if case == "truncated":
        _tar(path, _good(("big.bin", os.urandom(100_000))))
        path.write_bytes(path.read_bytes()[:60_000])
    elif case == "not a tar":
        path.write_bytes(b"\x00garbage" * 1000)
    elif case == "a folder":
        path.mkdir()
    elif case == "empty":
        _tar(path, [])
    scene.use(f"tar:{path}")
    scene.refused("fetch", "m", match=match)


# --- directory sources ------------------------------------------------------------------------


def _dir_case(case: str, src: Path, outside: Path) -> None:
    make_files(src, GOOD)
    make_files(outside, {"secret.json": b"{}", "more/secret.bin": b"x"})
    if case == "directory symlink outside":  # defect: used to be skipped, files silently missing
        (src / "extra").symlink_to(outside, target_is_directory=True)
    elif case == "file symlink outside":
        (src / "leak.json").symlink_to(outside / "secret.json")
    elif case == "relative symlink outside":
        (src / "leak.json").symlink_to(os.path.relpath(outside / "secret.json", src))
    elif case == "broken symlink":
        (src / "gone.json").symlink_to(src / "nowhere.json")
    elif case == "symlink loop":
        (src / "weights" / "loop").symlink_to(src, target_is_directory=True)
    elif case == "symlink loop through two links":
        make_files(src, {"a/x": b"1", "b/y": b"2"})
        (src / "a" / "to_b").symlink_to(src / "b", target_is_directory=True)
        (src / "b" / "to_a").symlink_to(src / "a", target_is_directory=True)
    elif case == "fifo":
        os.mkfifo(src / "pipe")
    elif case == "socket":
        os.mknod(src / "sock", stat.S_IFSOCK | 0o600)
    elif case == "unicode twins":
        (src / NFC).write_bytes(b"1")
        (src / NFD).write_bytes(b"2")


DIR_CASES = {
    "directory symlink outside": r"'extra'.*directory symlink leads outside",
    "file symlink outside": r"'leak\.json'.*symlink leads outside",
    "relative symlink outside": r"'leak\.json'.*symlink leads outside",
    "broken symlink": r"'gone\.json'.*broken symlink",
    "symlink loop": r"'weights/loop'.*loops back",
    "symlink loop through two links": r"'a/to_b/to_a'.*loops back",
    "fifo": r"'pipe'.*not a regular file",
    "socket": r"'sock'.*not a regular file",
    "unicode twins": r"Unicode twin",
}


@pytest.mark.parametrize("case", list(DIR_CASES))
def test_hostile_directory_refused(scene: Scene, case: str) -> None:
    src = scene.root / "bad"
    _dir_case(case, src, scene.root / "outside")
    scene.use(f"dir:{src}")
    scene.refused("fetch", "m", match=DIR_CASES[case])


def test_directory_symlink_inside_is_followed(scene: Scene) -> None:
    """A link that stays inside the source is fine, and its files are part of the model."""
    src = make_files(scene.root / "linked", GOOD)
    (src / "alias").symlink_to(src / "weights", target_is_directory=True)
    scene.use(f"dir:{src}")
    code, err = scene.run("fetch", "m")
    assert code == 0, err
    assert (scene.store / "m" / "alias" / "model.safetensors").read_bytes() == GOOD["weights/model.safetensors"]


def test_source_that_is_a_file_refused(scene: Scene) -> None:
    (scene.root / "file").write_bytes(b"x")
    scene.use(f"dir:{scene.root / 'file'}")
    scene.refused("fetch", "m", match=r"dir:.*file is not a directory")


# --- a full disk mid-file ----------------------------------------------------------------------


def test_disk_full_mid_file(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_files(scene.root / "new", GOOD | {"config.json": b'{"model_type": "new"}\n'})
    scene.use(f"dir:{src}")

    def full(self: ModelSource, source, out, chunk: int = 1 << 20) -> None:  # type: ignore[no-untyped-def]
        out.write(source.read(5))  # a few bytes land, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ModelSource, "copy", full)
    scene.refused("fetch", "m", match=r"m: disk full while writing (config\.json|tokenizer\.json|weights/)")


# --- locks and manifests edited by hand ---------------------------------------------------------


def _edit_lock(scene: Scene, change: Callable[[dict], object]) -> None:  # type: ignore[type-arg]
    data = json.loads(scene.lock.read_text())
    change(data)
    scene.lock.write_text(json.dumps(data))


def _consistent(data: dict) -> None:  # type: ignore[type-arg]
    """Recompute the digest and total, as a careful forger would."""
    from appliance.store.lock import LockedFile, files_digest

    files = [LockedFile(**f) for f in data["files"]]
    data["digest"] = files_digest(files)
    data["total_size"] = sum(f.size for f in files)


def _dup(data: dict) -> None:  # type: ignore[type-arg]
    data["files"].append(dict(data["files"][0]))
    _consistent(data)


def _twin(data: dict) -> None:  # type: ignore[type-arg]
    data["files"] += [{"path": NFC, "size": 1, "sha256": "a" * 64}, {"path": NFD, "size": 1, "sha256": "b" * 64}]
    _consistent(data)


def _escape(data: dict) -> None:  # type: ignore[type-arg]
    data["files"][0]["path"] = "../../etc/passwd"
    _consistent(data)


def _lock_folder(scene: Scene) -> None:
    scene.lock.unlink()
    scene.lock.mkdir()


LOCK_CASES: dict[str, tuple[Callable[[Scene], None], str]] = {
    "sha edited": (lambda s: _edit_lock(s, lambda d: d["files"][0].update(sha256="f" * 64)), r"digest does not match"),
    "size edited": (lambda s: _edit_lock(s, lambda d: d["files"][0].update(size=1)), r"digest does not match"),
    "total edited": (lambda s: _edit_lock(s, lambda d: d.update(total_size=1)), r"digest|total_size"),
    "path escapes": (lambda s: _edit_lock(s, _escape), r"'\.\./\.\./etc/passwd'.*'\.\.'"),
    "duplicate path": (lambda s: _edit_lock(s, _dup), r"listed twice"),
    "unicode twins": (lambda s: _edit_lock(s, _twin), r"Unicode twin"),
    "negative size": (lambda s: _edit_lock(s, lambda d: d["files"][0].update(size=-1)), r"files\.0\.size"),
    "unknown field": (lambda s: _edit_lock(s, lambda d: d.update(signed_by="me")), r"signed_by"),
    "not json": (lambda s: s.lock.write_text("{not json"), r"invalid lock"),
    "not text": (lambda s: s.lock.write_bytes(b"\xff\xfe\x00garbage"), r"cannot read lock|invalid lock"),
    "a folder": (lambda s: _lock_folder(s), r"cannot read lock: Is a directory"),
}


@pytest.mark.parametrize("command", ["fetch", "verify"])
@pytest.mark.parametrize("case", list(LOCK_CASES))
def test_lock_edited_by_hand_refused(scene: Scene, case: str, command: str) -> None:
    edit, match = LOCK_CASES[case]
    edit(scene)
    line = scene.refused(command, "m", match=match)
    assert "m.lock.json" in line


MANIFEST_CASES = {
    "not yaml": ("name: m\nsource: [unclosed\n", r"m\.yaml.*not valid YAML"),
    "not text": (b"\xff\xfe\x00\x01", r"m\.yaml.*cannot read"),
    "unknown field": (f"name: m{BODY.format(source='hf:o/r', revision='main')}surprise: 1\n", r"m\.yaml.*surprise"),
    "hostile source": (f"name: m{BODY.format(source='hf:../../etc', revision='main')}", r"m\.yaml.*source"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_manifest_edited_by_hand_refused(scene: Scene, case: str) -> None:
    text, match = MANIFEST_CASES[case]
    path = scene.manifests.root / "models" / "m.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    scene.refused("fetch", "m", match=match)


# --- a tampered store: verify finds it, and changes nothing -----------------------------------


def _tamper(model: Path, case: str, outside: Path) -> None:
    if case == "stray empty folder":  # defect: used to pass
        (model / "weights" / "empty").mkdir()
    elif case == "stray empty top folder":
        (model / "cache").mkdir()
    elif case == "extra file":
        (model / "notes.txt").write_bytes(b"x")
    elif case == "missing file":
        (model / "tokenizer.json").unlink()
    elif case == "truncated file":
        os.truncate(model / "tokenizer.json", 3)
    elif case == "symlink instead of a file":
        (model / "config.json").unlink()
        (model / "config.json").symlink_to(outside)
    elif case == "fifo instead of a file":
        (model / "config.json").unlink()
        os.mkfifo(model / "config.json")
    elif case == "folder instead of a file":
        (model / "config.json").unlink()
        (model / "config.json").mkdir()


TAMPER_CASES = {
    "stray empty folder": r"m: weights/empty/: extra folder",
    "stray empty top folder": r"m: cache/: extra folder",
    "extra file": r"m: notes\.txt: extra file",
    "missing file": r"m: tokenizer\.json: missing",
    "truncated file": r"m: tokenizer\.json: size 3 bytes",
    "symlink instead of a file": r"m: config\.json: is a symlink",
    "fifo instead of a file": r"m: config\.json: is a symlink or special file",
    "folder instead of a file": r"m: config\.json: is a folder, not a file",
}


@pytest.mark.parametrize("deep", ["--fast", "--deep"])
@pytest.mark.parametrize("case", list(TAMPER_CASES))
def test_tampered_store_found(scene: Scene, case: str, deep: str) -> None:
    (scene.root / "outside.json").write_bytes(b"{}")
    _tamper(scene.store / "m", case, scene.root / "outside.json")
    scene.refused("verify", "m", deep, match=TAMPER_CASES[case])
