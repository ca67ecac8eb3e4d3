"""Models by hub id or local directory, through huggingface_hub's cache.

`model.path` (and `decoding.draft.path`) may name a local directory or a hub id such as
`Qwen/Qwen3-30B-A3B`. A hub id is looked up in the local cache first (`HF_HUB_CACHE`, else
`HF_HOME/hub`); with `HF_HUB_OFFLINE=1` nothing else is tried, so a model that is not cached fails at
once with one line saying how to proceed. Without `HF_HUB_OFFLINE`, the hub is probed once per process with a
short timeout (`hub_reachable`) before any hub request; when it cannot be reached the cache is used as offline
mode would, so no network fails in a few seconds with one line instead of huggingface_hub's retries (about 30 s
of warnings). Online, only what moelab reads is downloaded: safetensors
shards, configs and tokenizer files (no `.bin`/`.pth` duplicates, no `original/` subfolders).

Resolution is in two steps so that a run can check its budget and host memory before any weight is
read or downloaded: `locate` fetches config.json only; `weight_dir` brings the weights.
The environment is read at call time (not at import, as huggingface_hub's constants are), so a
process that sets `HF_HUB_OFFLINE` or `HF_HUB_CACHE` after importing moelab is honoured too.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from moelab.core.errors import CheckpointError

# what a run reads: weights, configs, tokenizers (every format transformers' tokenizers load from)
DOWNLOAD_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                     "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
                     "merges.txt", "*.model", "*.tiktoken", "chat_template*"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # either: transformers' AutoTokenizer can load it
# snapshot_download's filter: top-level files only (gpt-oss ships original/ and metal/ copies of its weights)
DOWNLOAD_FILTER = {"allow_patterns": DOWNLOAD_PATTERNS, "ignore_patterns": ["*/*"]}
# the same without the weights: what a workload's token-length filter needs before any weight is read
TOKENIZER_FILTER = {"allow_patterns": [p for p in DOWNLOAD_PATTERNS if "safetensors" not in p],
                    "ignore_patterns": ["*/*"]}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_TRUE = {"1", "on", "yes", "true"}
REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout moelab runs from (installed editable)

T = TypeVar("T")


def in_checkout(path: str | Path) -> Path:
    """`path` as given; a relative one missing from the working directory is looked up in moelab's own checkout,
    where the committed reference files live (`checkpoints/v1/...`), so configs naming them work from anywhere."""
    local = Path(path).expanduser()
    if not local.exists() and not local.is_absolute() and (REPO_ROOT / local).exists():
        return REPO_ROOT / local
    return local


def looks_like_hub_id(ref: str) -> bool:
    """`name` or `org/name` as the hub spells them; `./x`, `/x`, `~/x` and `a/b/c` are paths."""
    return bool(_HUB_ID.match(ref)) and ".." not in ref and not ref.endswith((".", "-"))


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower()
    return env in _TRUE or bool(constants.HF_HUB_OFFLINE)


PROBE_TIMEOUT_S = 3.0
_PROBED: dict[str, bool] = {}  # endpoint -> reachable, once per process
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub's endpoint opens within `timeout_s` (name lookup included), probed once
    per process. Behind a proxy the direct probe says nothing, so the hub is assumed reachable there."""
    endpoint = hub_endpoint()
    if endpoint not in _PROBED:
        if any(os.environ.get(k) for k in _PROXY_VARS):
            _PROBED[endpoint] = True
        else:
            _PROBED[endpoint] = _probe(endpoint, timeout_s)
    return _PROBED[endpoint]


def _probe(endpoint: str, timeout_s: float) -> bool:
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=connect, daemon=True)  # a hanging name lookup is not bounded by the timeout
    t.start()
    t.join(timeout_s + 0.5)
    return bool(ok)


def no_downloads() -> bool:
    """Offline mode, or no network: only the cache is used."""
    return hub_offline() or not hub_reachable()


def _why_no_downloads() -> str:
    if hub_offline():
        return "HF_HUB_OFFLINE=1 forbids downloading"
    return f"the hub ({hub_endpoint()}) cannot be reached (no network?; HF_HUB_OFFLINE=1 skips this check)"


def _hub_kwargs() -> dict[str, Any]:
    return {"cache_dir": hub_cache(), "local_files_only": no_downloads(), "endpoint": os.environ.get("HF_ENDPOINT")}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a local directory, or a hub repo's snapshot in the cache."""

    ref: str                    # as the user wrote it
    dir: Path                   # holds config.json (a cached snapshot for a hub id)
    repo_id: str | None = None  # None: a local directory
    revision: str | None = None

    @property
    def is_hub(self) -> bool:
        return self.repo_id is not None

    @property
    def commit(self) -> str | None:
        """The hub commit a revision resolved to (the cache's snapshot folder is named after it)."""
        return self.dir.name if self.is_hub else None

    def __str__(self) -> str:
        return self.ref if self.revision is None else f"{self.ref}@{self.revision}"


def locate(ref: str, revision: str | None = None) -> ModelSource:
    """A local directory as it is; a hub id resolved to its cached snapshot, fetching config.json only.
    A relative directory missing from the working directory is looked up in moelab's own checkout, where the
    committed reference models live (`checkpoints/v1/...`), so presets naming them work from any directory."""
    local = in_checkout(ref)
    if local.exists() or not looks_like_hub_id(ref):
        return ModelSource(ref, local)  # the checkpoint reader names what is wrong with a bad directory
    from huggingface_hub import hf_hub_download

    rev = None if revision in (None, "") else str(revision)
    config = _hub_call(ref, rev, lambda: hf_hub_download(ref, "config.json", revision=rev, **_hub_kwargs()))
    return ModelSource(ref, Path(config).parent, ref, rev)


def cached_weight_files(source: ModelSource) -> list[Path] | None:
    """The safetensors files of `source` if all of them are on disk (per the shard index), else None."""
    index = source.dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"{index} is not a valid safetensors index") from None
        files = [source.dir / n for n in names]
        return files if all(f.is_file() for f in files) else None
    files = sorted(source.dir.glob("*.safetensors"))
    return files or None


def tensor_shapes(source: ModelSource) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """(name, safetensors dtype, shape) of every tensor, from the files' headers only: the local ones, or for a
    hub model not yet downloaded the headers the hub serves (a few KB per shard)."""
    files = cached_weight_files(source)
    if files is None and source.is_hub and not no_downloads():
        from huggingface_hub import get_safetensors_metadata

        meta = _hub_call(source.ref, source.revision,
                         lambda: get_safetensors_metadata(source.repo_id, revision=source.commit))
        for fm in meta.files_metadata.values():
            for name, info in fm.tensors.items():
                yield name, str(info.dtype), tuple(int(s) for s in info.shape)
        return
    from moelab.models.checkpoint import read_header

    if files is None:
        if not source.is_hub:
            raise CheckpointError(f"no *.safetensors files in {source.dir}")
        raise _not_cached(source, weights_only=True)
    for file in files:
        header = read_header(file)
        for name, meta in header.items():
            if not name.startswith("__"):
                yield name, str(meta.get("dtype")), tuple(int(s) for s in meta.get("shape", ()))


def weight_dir(source: ModelSource) -> Path:
    """The directory holding the weights, downloading a hub model's missing files first (online only)."""
    if not source.is_hub or cached_weight_files(source) is not None:
        return source.dir
    if no_downloads():
        raise _not_cached(source, weights_only=True)
    from huggingface_hub import snapshot_download

    kw = _hub_kwargs()
    path = _hub_call(source.ref, source.revision, lambda: snapshot_download(
        source.repo_id, revision=source.commit, **DOWNLOAD_FILTER, **kw))  # the commit config.json came from
    return Path(path)


def tokenizer_dir(source: ModelSource) -> Path:
    """The directory holding the tokenizer, fetching a hub model's tokenizer files (never its weights) when the
    cache lacks them: workloads that filter prompts by token length need it before any weight is read. Offline,
    the cached snapshot as it is (the weights' own check then names what is missing)."""
    if not source.is_hub or no_downloads() or has_tokenizer(source.dir):
        return source.dir
    from huggingface_hub import snapshot_download

    kw = _hub_kwargs()
    path = _hub_call(source.ref, source.revision, lambda: snapshot_download(
        source.repo_id, revision=source.commit, **TOKENIZER_FILTER, **kw))
    return Path(path)


def has_tokenizer(path: Path) -> bool:
    return any((path / f).exists() for f in TOKENIZER_FILES)


def _not_cached(source: ModelSource, weights_only: bool = False) -> CheckpointError:
    rev = f" --revision {source.revision}" if source.revision else ""
    what = ": its config.json is in the Hugging Face cache but not its weights" if weights_only else \
        " is neither a local directory nor in the Hugging Face cache"
    return CheckpointError(
        f"{source}{what} ({hub_cache()}), and {_why_no_downloads()}; fetch it where there is a "
        f"network (`hf download {source.repo_id or source.ref}{rev}`, then copy the cache or point HF_HUB_CACHE at "
        "it), give model.path a local directory, or set model.random_init=true for random weights at the "
        "preset's shapes")


def _hub_call(ref: str, revision: str | None, call: Callable[[], T]) -> T:
    """Run a huggingface_hub call, turning its errors into one line that says what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = ref if revision is None else f"{ref}@{revision}"
    login = "log in with `hf auth login` or set HF_TOKEN"
    try:
        return call()
    except GatedRepoError:
        raise CheckpointError(f"{name} is a gated model: accept its terms on https://huggingface.co/{ref} and "
                              f"{login}, or give model.path a local directory") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{name} is neither a local directory nor a model on the hub you can read (a typo, "
                              f"or a private model: {login})") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{ref} has no revision {revision!r} on the hub (model.revision: a branch, tag "
                              "or commit hash)") from None
    except LocalEntryNotFoundError:
        source = ModelSource(ref, Path(ref), ref, revision)
        if no_downloads():
            raise _not_cached(source) from None
        raise CheckpointError(f"{name} is not in the Hugging Face cache ({hub_cache()}) and the hub cannot be "
                              "reached; check the network, or give model.path a local directory") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise CheckpointError(f"{name}: the hub refused access (HTTP {status}); {login} with a token that "
                                  "can read it") from None
        raise CheckpointError(f"{name}: hub request failed ({' '.join(str(e).split())[:200]})") from None
