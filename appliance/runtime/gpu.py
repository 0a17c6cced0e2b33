"""`appliance doctor`'s GPU checks: the card nvidia-smi reports against the profile's plan, the
models' compute capability floors, and the host driver against the image's CUDA.

Everything comes from one `nvidia-smi --query-gpu=… --format=csv,noheader,nounits` call (inside the
container it reports the *host's* driver); tests feed recorded outputs of real cards
(tests/fixtures/nvidia-smi/).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from appliance.manifest import Catalog, Profile
from appliance.runtime.checks import COMMAND_TIMEOUT, Check, Runner, run_command
from appliance.runtime.plan import GIB, PlanError, plan_profile

NVIDIA_SMI = (
    "nvidia-smi",
    "--query-gpu=name,memory.total,compute_cap,driver_version",
    "--format=csv,noheader,nounits",
)
# Cards report less than their nominal size: ECC on GDDR6 data-centre cards (A10, L4, L40S) hides
# 1/16 of it, so a "24 GB" A10 shows 22.5 GiB. Below the target by more than this is a failure;
# within it, the planned fractions decide.
MEMORY_TOLERANCE = 0.07
# The image's CUDA: `appliance image build` bakes the base's CUDA_VERSION (set by every nvidia/cuda
# image, hence by vllm/vllm-openai) into this variable and the `appliance.cuda-version` label.
CUDA_VERSION_ENV = ("APPLIANCE_CUDA_VERSION", "CUDA_VERSION")
# Oldest Linux driver a CUDA major release runs on through minor-version compatibility: NVIDIA's
# CUDA Toolkit Release Notes, table "CUDA Toolkit and Minimum Required Driver Version for CUDA Minor
# Version Compatibility" (12.x >= 525.60.13, 13.x >= 580.65.06); rounded to 525 / 580 in
# https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html. Plain
# vllm/vllm-openai tags are built on CUDA 13 since vLLM 0.20 (vllm#42738): R535/R550/R570 hosts
# cannot run them. (NVIDIA's forward-compatibility libraries, which vLLM's image registers, help only
# data-centre GPUs on supported driver branches: below the minimum is a failure, not a guess.)
MIN_DRIVER: dict[int, tuple[int, ...]] = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 65, 6)}


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mib: float | None
    compute_capability: float | None
    driver: str | None = None


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:  # "[N/A]"
        return None


def parse_gpus(output: str) -> list[Gpu]:
    """Rows of `NVIDIA_SMI`'s output: name, memory.total (MiB), compute_cap[, driver_version]."""
    gpus = []
    for line in output.splitlines():
        if not line.strip():
            continue
        parts = [part.strip() for part in line.rsplit(",", 3)]  # a name could hold a comma
        if len(parts) == 4:
            name, memory, cap, driver = parts
        elif len(parts) == 3:  # recorded before the driver was queried
            (name, memory, cap), driver = parts, ""
        else:
            name, memory, cap, driver = line.strip(), "", "", ""
        gpus.append(Gpu(name, _number(memory), _number(cap), driver if driver[:1].isdigit() else None))
    return gpus


def _visible_index(environ: Mapping[str, str]) -> int:
    """The GPU the servers use: the first CUDA sees (CUDA_VISIBLE_DEVICES' first entry if an index)."""
    first = environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def image_cuda_version(environ: Mapping[str, str]) -> str | None:
    return next((environ[key] for key in CUDA_VERSION_ENV if environ.get(key)), None)


def check_gpu(
    catalog: Catalog,
    profile: Profile,
    gpu_memory_gib: float | None = None,
    run: Runner = run_command,
    environ: Mapping[str, str] = os.environ,
    cuda_version: str | None = None,
) -> list[Check]:
    """`cuda_version`: the image's (default: from `CUDA_VERSION_ENV` in `environ`)."""
    if profile.target.device == "cpu":
        return [Check("gpu", "pass", "cpu profile: no GPU needed")]
    try:
        proc = run(NVIDIA_SMI, COMMAND_TIMEOUT)
    except FileNotFoundError:
        hint = "no NVIDIA driver visible (run the container with --gpus / the NVIDIA container toolkit)"
        return [Check("gpu", "fail", f"nvidia-smi not found: {hint}")]
    except subprocess.TimeoutExpired:
        return [Check("gpu", "fail", f"nvidia-smi did not answer within {COMMAND_TIMEOUT:.0f} s (driver problem?)")]
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        return [Check("gpu", "fail", f"nvidia-smi failed (exit {proc.returncode}): {' '.join(message[:2])}")]
    gpus = parse_gpus(proc.stdout)
    index = _visible_index(environ)
    if not gpus:
        return [Check("gpu", "fail", "nvidia-smi lists no GPU")]
    if index >= len(gpus):
        return [Check("gpu", "fail", f"CUDA_VISIBLE_DEVICES selects GPU {index}, nvidia-smi lists {len(gpus)}")]
    gpu = gpus[index]
    others = f" (GPU {index} of {len(gpus)}; every server runs on it)" if len(gpus) > 1 else ""
    memory = f"{gpu.memory_mib / 1024:.1f} GiB" if gpu.memory_mib is not None else "memory unknown"
    cap = f"compute capability {gpu.compute_capability:.1f}" if gpu.compute_capability else "capability unknown"
    return [
        Check("gpu", "pass", f"{gpu.name}, {memory}, {cap}{others}"),
        check_memory(catalog, profile, gpu, gpu_memory_gib),
        check_capability(catalog, profile, gpu),
        check_driver(gpu, cuda_version or image_cuda_version(environ)),
    ]


def check_memory(catalog: Catalog, profile: Profile, gpu: Gpu, limit_gib: float | None = None) -> Check:
    name = "gpu memory"
    if gpu.memory_mib is None:
        return Check(name, "fail", "nvidia-smi does not report the GPU's memory")
    have = gpu.memory_mib / 1024
    note = ""
    if limit_gib is not None:
        note = f" (--gpu-memory-gib {limit_gib:g} of {have:.2f} GiB)"
        have = min(have, limit_gib)
    target = profile.target.gpu_memory_gib or 0
    try:
        measured = plan_profile(catalog, profile, have)
    except PlanError as exc:
        return Check(name, "fail", f"{have:.2f} GiB{note}: {exc}")
    if have < target * (1 - MEMORY_TOLERANCE):
        return Check(name, "fail", f"{have:.2f} GiB{note} is below the profile's {target:g} GiB target")
    # The image renders --gpu-memory-utilization planned for the target; on a smaller card each
    # fraction of the *measured* total must still cover that model's need.
    planned = plan_profile(catalog, profile)
    short = [m for m in planned.models if m.fraction * have * GIB < m.need_bytes]
    if short:
        rows = "; ".join(
            f"{m.name} gets {m.fraction:.2f} x {have:.2f} = {m.fraction * have:.2f} GiB < need {m.need_bytes / GIB:.2f}"
            for m in short
        )
        return Check(name, "fail", f"fractions planned for {target:g} GiB do not fit {have:.2f} GiB{note}: {rows}")
    fits = f"plan needs {measured.need_bytes / GIB:.2f} GiB of {have * measured.safe_fraction:.2f} safe"
    if have < target:
        return Check(name, "warn", f"{have:.2f} GiB{note}, slightly under the {target:g} GiB target; {fits}")
    return Check(name, "pass", f"{have:.2f} GiB{note} >= target {target:g} GiB; {fits}")


def check_capability(catalog: Catalog, profile: Profile, gpu: Gpu) -> Check:
    name = "compute capability"
    cap = gpu.compute_capability
    if cap is None:
        return Check(name, "warn", "nvidia-smi does not report the compute capability (driver too old?)")
    problems = []
    wanted = profile.target.compute_capability
    if wanted is not None and cap < wanted:
        problems.append(f"profile {profile.name} targets {wanted:.1f}")
    for model in catalog.profile_models(profile.name):
        needed = model.resources.min_compute_capability
        if needed is not None and cap < needed:
            problems.append(f"{model.name} needs >= {needed:.1f}")
    if problems:
        return Check(name, "fail", f"GPU has {cap:.1f}: " + "; ".join(problems))
    return Check(name, "pass", f"{cap:.1f} meets the profile and every model")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _dotted(version: tuple[int, ...]) -> str:
    return f"{version[0]}.{version[1]:02d}.{version[2]:02d}" if len(version) == 3 else ".".join(map(str, version))


def min_driver(cuda_version: str) -> tuple[int, ...] | None:
    """The oldest driver CUDA `cuda_version` (e.g. "12.8.1") runs on, None for an unknown major."""
    version = _version(cuda_version)
    return MIN_DRIVER.get(version[0]) if version else None


def check_driver(gpu: Gpu, cuda_version: str | None) -> Check:
    name = "gpu driver"
    if not cuda_version:
        return Check(
            name,
            "warn",
            f"driver {gpu.driver or 'unknown'}; the image's CUDA version is unknown ($APPLIANCE_CUDA_VERSION, "
            "image label appliance.cuda-version; --cuda-version): not checked",
        )
    needed = min_driver(cuda_version)
    if needed is None:
        return Check(name, "warn", f"no known minimum driver for CUDA {cuda_version}: driver {gpu.driver} not checked")
    if gpu.driver is None:
        wanted = f"CUDA {cuda_version} needs >= {_dotted(needed)}"
        return Check(name, "warn", f"nvidia-smi does not report the driver; {wanted}")
    if _version(gpu.driver) < needed:
        major = _version(cuda_version)[0]
        return Check(
            name,
            "fail",
            f"host driver {gpu.driver} is older than {_dotted(needed)}, the minimum for the image's CUDA "
            f"{cuda_version} (CUDA {major}.x minor-version compatibility): upgrade the host driver to "
            f">= {_dotted(needed)}, or build on a base with an older CUDA",
        )
    return Check(name, "pass", f"host driver {gpu.driver} >= {_dotted(needed)} (minimum for CUDA {cuda_version})")
