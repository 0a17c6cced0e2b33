"""Hub mirror: one HTTP server speaking the Hugging Face and ModelScope download protocols.

An operator feature (`appliance mirror serve` serves a verified store to the hosts of an isolated
site: `store.repos_from_store`) that the tests and the CI job also use, with generated tiny models.

Implements the requests of huggingface_hub 2.4.0 and modelscope 1.40.2 (which delegates to
modelscope_hub 0.5.1), read from their source; see `hf` and `modelscope` for the endpoints. The two
URL spaces do not collide (ModelScope lives under `/api/v1/`), so one server serves both.

Point the clients at it with `HF_ENDPOINT=<url>` and `MODELSCOPE_ENDPOINT=<url>`
(`HubMirror.client_env` gives the full set for a child process). Repos are served from files on
local disk, streamed with `sendfile`; `Faults` makes the mirror misbehave for tests.

    with HubMirror([repo_from_dir("org/tiny", path)]) as mirror:
        os.environ["HF_ENDPOINT"] = mirror.url
"""

from .faults import Faults
from .repo import MirrorFile, MirrorRepo, is_lfs, repo_from_dir
from .server import HubMirror, RequestRecord

__all__ = ["Faults", "HubMirror", "MirrorFile", "MirrorRepo", "RequestRecord", "is_lfs", "repo_from_dir"]
