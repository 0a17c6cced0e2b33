"""Preflight, vLLM side: resolve for each model what vLLM resolves when its server boots.

Run by path with the base image's own interpreter (`$APPLIANCE_VLLM_PYTHON preflight_vllm.py`), which
has vLLM and transformers but not the appliance package: so this file imports nothing of ours.
Input (stdin, JSON): {"models": [{"name", "engine", "model_dir", "entrypoint", "argv",
"python_packages", "prompt_form", "prompt_text"}]}. Output (stdout, last line, JSON): a list of
{"model", "check", "ok", "detail"}. Needs no GPU and no network.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import sys
import traceback
from pathlib import Path
from typing import Any

# Processor-side files whose auto_map vLLM follows when it builds the processor (AutoProcessor,
# AutoImageProcessor, AutoTokenizer …). `AutoModel*` entries are left out on purpose: vLLM brings
# its own model code and never imports a repo's modeling_*.py.
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "video_preprocessor_config.json",
)
# Where a repo keeps a template for its processor; with one present, a processor that fails to load
# means vLLM silently renders with the tokenizer's template instead.
PROCESSOR_TEMPLATES = ("chat_template.json", "chat_template.jinja")

Finding = dict[str, Any]


def _error(exc: BaseException) -> str:
    lines = [line for line in traceback.format_exception_only(type(exc), exc) if line.strip()]
    return " ".join(line.strip() for line in lines)[-1500:]


class Checker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.dir = Path(spec["model_dir"])
        self.findings: list[Finding] = []

    def record(self, check: str, ok: bool, detail: str = "") -> bool:
        self.findings.append({"model": self.name, "check": check, "ok": ok, "detail": detail})
        return ok

    def attempt(self, check: str, fn: Any, *args: Any) -> Any:
        """Run one check; a failure is recorded with its error and returns None."""
        try:
            value, detail = fn(*args)
        except BaseException as exc:  # also SystemExit: a check must never end the run
            self.record(check, False, _error(exc))
            return None
        self.record(check, True, detail)
        return value if value is not None else True

    # -- the checks, in the order the server meets them --------------------------------------------

    def entrypoint(self) -> tuple[None, str]:
        module = self.spec["entrypoint"]
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"{module} is not in this vLLM")
        return None, module

    def flags(self) -> tuple[Any, str]:
        parser = _server_parser()
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = parser.parse_args(self.spec["argv"])
        except SystemExit:  # argparse reports a rejected flag by exiting
            raise ValueError(" ".join(err.getvalue().strip().splitlines()[-1:]) or "rejected") from None
        with contextlib.suppress(ImportError):
            from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

            validate_parsed_serve_args(args)
        return args, f"{len(self.spec['argv'])} arguments accepted"

    def architecture(self) -> tuple[None, str]:
        from vllm import ModelRegistry

        archs = json.loads((self.dir / "config.json").read_text()).get("architectures") or []
        known = set(ModelRegistry.get_supported_archs())
        missing = [a for a in archs if a not in known]
        if not archs or missing:
            raise ValueError(f"architecture {missing or archs} not supported by this vLLM")
        return None, ", ".join(archs)

    def remote_code(self, trust: bool) -> tuple[None, str]:
        if not trust:
            return None, "not trusted: no repo code runs"
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        refs = set()
        config = json.loads((self.dir / "config.json").read_text())
        if ref := (config.get("auto_map") or {}).get("AutoConfig"):
            refs.add(ref)
        for name in PROCESSOR_FILES:
            if (self.dir / name).is_file():
                auto_map = json.loads((self.dir / name).read_text()).get("auto_map") or {}
                for key, value in auto_map.items():
                    if not key.startswith("AutoModel"):
                        refs.update(v for v in (value if isinstance(value, list) else [value]) if v)
        for ref in sorted(refs):
            try:
                get_class_from_dynamic_module(ref, str(self.dir))
            except BaseException as exc:
                raise RuntimeError(f"{ref}: {_error(exc)}") from exc
        return None, ", ".join(sorted(refs)) or "none named"

    def model_config(self, args: Any) -> tuple[Any, str]:
        from vllm.engine.arg_utils import AsyncEngineArgs

        config = AsyncEngineArgs.from_cli_args(args).create_model_config()
        return config, f"max_model_len {config.max_model_len}, {config.architecture}"

    def tokenizer(self, model_config: Any) -> tuple[Any, str]:
        from vllm.tokenizers import get_tokenizer

        tok = get_tokenizer(str(self.dir), trust_remote_code=model_config.trust_remote_code)
        return tok, type(tok).__name__

    def processor(self, model_config: Any) -> tuple[Any, str]:
        from transformers import ProcessorMixin
        from vllm.transformers_utils.processor import get_processor

        proc = get_processor(
            str(self.dir), trust_remote_code=model_config.trust_remote_code, processor_cls=ProcessorMixin
        )
        return proc, f"{type(proc).__name__} ({type(proc).__module__})"

    def chat_template(self, model_config: Any, tokenizer: Any) -> tuple[str, str]:
        from vllm.renderers.hf import _try_get_processor_chat_template, resolve_chat_template

        from_processor = _try_get_processor_chat_template(
            tokenizer, revision=None, code_revision=None, trust_remote_code=model_config.trust_remote_code
        )
        template = resolve_chat_template(tokenizer, None, None, model_config=model_config)
        has_own = any((self.dir / n).is_file() for n in PROCESSOR_TEMPLATES)
        if from_processor is None and has_own:
            raise RuntimeError(
                "the processor's chat template did not load (vLLM swallows that error): vLLM would render "
                "with the tokenizer's template instead, a different prompt with no error"
            )
        if not template:
            raise RuntimeError("no chat template: vLLM would refuse chat requests")
        return template, "the processor's" if from_processor else "the tokenizer's"

    def prompt(self, args: Any, model_config: Any, tokenizer: Any, processor: Any, template: str) -> tuple[None, str]:
        text = self.spec["prompt_text"]
        if getattr(args, "chat_template_content_format", "auto") == "string":
            from vllm import ModelRegistry

            cls = ModelRegistry._try_load_model_cls(model_config.architecture)
            placeholder = cls.get_placeholder_str("image", 0)
            content: Any = f"{placeholder}\n{text}"
        else:
            content = [{"type": "image"}, {"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        prompt = tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=True, tokenize=False
        )
        at = 0
        for part in self.spec["prompt_form"]:
            found = prompt.find(part, at)
            if found < 0:
                raise ValueError(f"rendered prompt {prompt!r} lacks {part!r} (in order) of the engine's form")
            at = found + len(part)
        from PIL import Image

        inputs = processor(text=[prompt], images=[Image.new("RGB", (96, 64), "white")], return_tensors="np")
        image_token_id = model_config.hf_config.image_token_id
        n = int((inputs["input_ids"][0] == image_token_id).sum())
        if n < 2:
            raise ValueError(f"the processor expanded the image to {n} image tokens")
        return None, f"{len(prompt)} chars, {n} image tokens"

    def packages(self) -> tuple[None, str]:
        for module in self.spec["python_packages"]:
            importlib.import_module(module)
        return None, ", ".join(self.spec["python_packages"]) or "none"

    def run(self) -> list[Finding]:
        self.attempt("entrypoint", self.entrypoint)
        args = self.attempt("flags", self.flags)
        self.attempt("packages", self.packages)
        if not self.attempt("architecture", self.architecture) or args is None:
            return self.findings
        if not self.attempt("remote code", self.remote_code, bool(args.trust_remote_code)):
            return self.findings
        model_config = self.attempt("config", self.model_config, args)
        if model_config is None:
            return self.findings
        tokenizer = self.attempt("tokenizer", self.tokenizer, model_config)
        processor = self.attempt("processor", self.processor, model_config)
        if tokenizer is None:
            return self.findings
        template = self.attempt("chat template", self.chat_template, model_config, tokenizer)
        if template is not None and processor is not None:
            self.attempt("prompt", self.prompt, args, model_config, tokenizer, processor, template)
        return self.findings


def _server_parser() -> Any:
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # vLLM before the launchers package
        from vllm.entrypoints.openai.cli_args import make_arg_parser  # type: ignore[no-redef]
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


def main() -> int:
    spec = json.load(sys.stdin)
    findings: list[Finding] = []
    for model in spec["models"]:
        findings += Checker(model).run()
    sys.stdout.flush()
    print("\n" + json.dumps(findings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
