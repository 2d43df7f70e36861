"""Files from the Hugging Face Hub, through `huggingface_hub`: its cache, revisions, offline mode,
endpoint, tokens, progress bars and resumable downloads, with one-line errors.

Everything goes through ``huggingface_hub.hf_hub_download``, so the environment means what it means
to every Hub library: ``HF_HOME`` and ``HF_HUB_CACHE`` (where the cache is), ``HF_HUB_OFFLINE=1``
(the cache only, no network), ``HF_ENDPOINT`` (a mirror), ``HF_TOKEN`` or a saved login (gated and
private repos). The variables are read when a file is asked for, not when vitfast is imported.

No torch here: this module only finds files. What they hold is read by `vitfast.convert.repos`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Sequence

HF_HUB_PREFIX = "hf-hub:"


class HubError(ValueError):
    """A file the Hub (or its cache) could not give: the message names the repo, the files tried and the fix."""


def split_hub_id(text: str) -> tuple[str, str | None]:
    """(repo id, revision) of 'hf-hub:ORG/REPO' or 'hf-hub:ORG/REPO@REVISION' (the prefix is optional here);
    ValueError for anything that is not ORG/REPO."""
    repo = text[len(HF_HUB_PREFIX):] if text.startswith(HF_HUB_PREFIX) else text
    repo, _, revision = repo.partition("@")
    repo = repo.strip("/")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise HubError(f"{text!r} is not a Hub repo: write hf-hub:ORG/NAME (for example hf-hub:timm/"
                       "vit_base_patch16_224.augreg2_in21k_ft_in1k), optionally with @REVISION.")
    return repo, revision or None


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline() -> bool:
    """Whether the Hub libraries are told to stay off the network: HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE,
    which huggingface_hub honours too (read now, not at import)."""
    return _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE")


def cache_dir() -> Path | None:
    """The cache the environment names now (HF_HUB_CACHE, the older HUGGINGFACE_HUB_CACHE, else HF_HOME/hub);
    None leaves the choice to huggingface_hub (~/.cache/huggingface/hub)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    return None


def _cache_words() -> str:
    where = cache_dir()
    if where is None:
        try:
            from huggingface_hub import constants

            where = constants.HF_HUB_CACHE
        except ImportError:
            where = "~/.cache/huggingface/hub"
    return str(where)


class Missing(Exception):
    """One file not in the repo (or not in the cache when offline): why, in words."""

    def __init__(self, filename: str, why: str) -> None:
        super().__init__(why)
        self.filename, self.why = filename, why


class Unreachable(HubError):
    """The Hub could not be reached and the cache does not hold the file."""


def download(repo: str, filename: str, revision: str | None = None, *, local_only: bool = False) -> Path:
    """The local path of `filename` in `repo` at `revision`: from the cache, else downloaded into it
    (`local_only`: from the cache only, as offline).

    Raises :class:`Missing` when the repo does not have the file (or, offline, the cache does not),
    :class:`Unreachable` when the Hub cannot be reached and the cache lacks the file, and
    :class:`HubError` for what no other file of the repo could fix: an unknown repo or revision, a gated
    repo without access.
    """
    try:
        from huggingface_hub import hf_hub_download  # (importing it sets its loggers' levels)
        from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                           LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError:
        raise HubError("reading Hub repos needs the huggingface_hub package: pip install huggingface_hub.") from None
    where = f"the Hub repo {repo}" + (f" at revision {revision}" if revision else "")
    local = local_only or offline()
    try:
        with _quiet_retries():
            return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir(),
                                        local_files_only=local, library_name="vitfast"))
    except GatedRepoError:  # before RepositoryNotFoundError, its base
        raise HubError(f"{where} is gated: accept its terms on its Hub page, then log in (`hf auth login`) or set "
                       "HF_TOKEN.") from None
    except RepositoryNotFoundError:
        raise HubError(f"{where} does not exist (or is private): check the name, or log in (`hf auth login`, or "
                       "HF_TOKEN) if it is yours.") from None
    except RevisionNotFoundError:
        raise HubError(f"{where}: no such revision; pass a branch, tag or commit of the repo.") from None
    except LocalEntryNotFoundError:  # before EntryNotFoundError, its base
        if local:
            flag = "HF_HUB_OFFLINE=1 forbids downloading" if offline() else "the Hub could not be reached"
            raise Missing(filename, f"not in the cache {_cache_words()}, and {flag}") from None
        raise Unreachable(f"cannot reach the Hub for {filename} of {where}, and the cache {_cache_words()} does not "
                          "hold it: check the network (or HF_ENDPOINT), or fill the cache on a machine that has one "
                          "and set HF_HUB_OFFLINE=1.") from None
    except EntryNotFoundError:  # (huggingface_hub >= 1 raises RemoteEntryNotFoundError, a subclass)
        raise Missing(filename, "not in the repo") from None
    except HfHubHTTPError as exc:
        raise HubError(f"the Hub refused {filename} of {where} ({' '.join(str(exc).split())[:200]}).") from None


@contextlib.contextmanager
def _quiet_retries():
    """huggingface_hub retries a request that fails to connect (with back-off, about 25 s) and logs a warning
    per try; the retries stay, the warnings go (for the call only): what failed is said once, in vitfast's
    error."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def download_first(repo: str, candidates: Sequence[str], revision: str | None = None, *,
                   local_only: bool = False) -> Path:
    """The first of `candidates` that `repo` has (downloaded); HubError naming each one tried and why not."""
    tried = []
    for name in candidates:
        try:
            return download(repo, name, revision, local_only=local_only)
        except Missing as missing:
            tried.append(f"{name} ({missing.why})")
    raise HubError(f"the Hub repo {repo}{' at revision ' + revision if revision else ''} has none of the files "
                   f"vitfast reads: tried {'; '.join(tried)}. " + _fix(local_only))


def _fix(local_only: bool = False) -> str:
    if local_only and not offline():
        return ("The Hub could not be reached: check the network (or HF_ENDPOINT), or fill the cache on a machine "
                "that has one.")
    if offline():
        return ("Download it once with network (unset HF_HUB_OFFLINE), or check the name and tag "
                "(`vitfast train --list-models --pretrained`).")
    return "Check the name and tag (`vitfast train --list-models --pretrained`) or pass the repo as hf-hub:ORG/NAME."
