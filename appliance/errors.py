"""Typed errors, grouped by theme. Each also inherits the builtin a caller would expect.

The CLI prints `str(error)` as one line and exits non-zero; tracebacks only with APPLIANCE_DEBUG=1.
"""

from __future__ import annotations

from pathlib import Path


class ApplianceError(Exception):
    """Base of every expected failure: the message alone must tell the operator what to do."""

    exit_code = 1


# --- manifests --------------------------------------------------------------------------------


class ManifestError(ApplianceError, ValueError):
    """A manifest, profile or lock file is invalid; the message names file, field and problem."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: invalid\n{lines}" if len(problems) > 1 else f"{path}: {problems[0]}")


class UnknownNameError(ApplianceError, KeyError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, known
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(sorted(known)) or '(none)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


# --- locks and store integrity ------------------------------------------------------------------


class LockError(ApplianceError, ValueError):
    """A lock is missing, malformed, or disagrees with its manifest (`--frozen`)."""


class UnsafePathError(ApplianceError, ValueError):
    """A listing names a path that would escape the model directory, or names it twice."""

    def __init__(self, model: str, path: str, reason: str) -> None:
        self.model, self.path, self.reason = model, path, reason
        super().__init__(f"{model}: refusing file {path!r}: {reason}")


class IntegrityError(ApplianceError):
    """Bytes on disk or on the wire differ from what the lock or the hub promised."""

    def __init__(self, model: str, path: str, problem: str) -> None:
        self.model, self.path, self.problem = model, path, problem
        super().__init__(f"{model}: {path}: {problem}")


class VerifyError(ApplianceError):
    """`verify` found problems; carries every one of them."""

    def __init__(self, problems: list[IntegrityError]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# --- sources ----------------------------------------------------------------------------------


class SourceError(ApplianceError):
    """A model source could not deliver (base class of the hub errors below)."""


class HubUnreachableError(SourceError, ConnectionError):
    pass


class AccessDeniedError(SourceError, PermissionError):
    pass


class RevisionNotFoundError(SourceError, LookupError):
    pass


class RepoNotFoundError(SourceError, LookupError):
    pass


class UnpinnedRevisionError(SourceError, ValueError):
    pass


class DiskFullError(ApplianceError, OSError):
    def __str__(self) -> str:  # the message, without OSError's "[Errno 28]" prefix
        return str(self.strerror) if self.strerror else super().__str__()


class FetchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a fetch, once in-flight transfers were abandoned; says what the next run resumes.
    Still a KeyboardInterrupt, so library callers that stop on Ctrl-C keep doing so."""

    def __init__(self, model: str, partial: int, ready: int) -> None:
        self.model, self.partial, self.ready = model, partial, ready
        super().__init__(
            f"interrupted; {model}: {ready} checked and {partial} partial files kept, "
            "the next `appliance fetch` resumes them"
        )


class Interrupted(ApplianceError):
    """What the CLI raises for Ctrl-C (a plain ApplianceError passes click untouched): exit 130."""

    exit_code = 130


# --- gateway: documents and OCR engines ------------------------------------------------------------
# Each carries the HTTP status the API layer answers with, so the routes map errors in one place.


class GatewayError(ApplianceError):
    """A request the gateway could not serve; `status_code` is what the API layer answers."""

    status_code = 500


class DocumentError(GatewayError, ValueError):
    """An upload that cannot be turned into pages: malformed, unsupported, or outside the limits."""

    status_code = 400


class UnsupportedDocumentError(DocumentError):
    status_code = 415


class DocumentTooLargeError(DocumentError):
    """Upload bytes, decoded pixels per page or page count above the configured limit."""

    status_code = 413


class TaskNotSupportedError(GatewayError, ValueError):
    """The chosen engine has no prompt for this task (e.g. chart on dots.ocr)."""

    status_code = 422


class EngineError(GatewayError):
    """The engine's server answered, but not with something usable (a 4xx from vLLM, no choices)."""

    status_code = 502

    def __init__(self, engine: str, message: str) -> None:
        self.engine = engine
        super().__init__(f"{engine}: {message}")


class EngineUnavailable(EngineError, ConnectionError):
    """The engine's server refused the connection, is still starting, or answered 5xx: retry later."""

    status_code = 503

    def __init__(self, engine: str, message: str, retry_after: int = 5) -> None:
        self.retry_after = retry_after
        super().__init__(engine, message)


class EngineTimeout(EngineError, TimeoutError):
    """The engine took longer than its configured timeout."""

    status_code = 504


# --- images and bundles -----------------------------------------------------------------------


class ImageError(ApplianceError):
    """Building, importing or saving an image failed (a tool is missing or exited non-zero)."""


class BundleError(ApplianceError):
    """A saved bundle (tar + SHA256SUMS + bundle.json) is not what was built; names every bad file."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("bundle refused:\n" + "\n".join(f"  - {p}" for p in problems))


class SigningError(ApplianceError):
    """A key is unusable, or a signature is missing, made by another key, or does not match."""
