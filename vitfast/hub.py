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
    """Whether HF_HUB_OFFLINE forbids the network (read now, not at import)."""
    return _truthy("HF_HUB_OFFLINE")


def cache_dir() -> Path:
    """The Hub cache huggingface_hub uses: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


class Missing(Exception):
    """One file not in the repo (or not in the cache when offline): why, in words."""

    def __init__(self, filename: str, why: str) -> None:
        super().__init__(why)
        self.filename, self.why = filename, why


def download(repo: str, filename: str, revision: str | None = None) -> Path:
    """The local path of `filename` in `repo` at `revision`: from the cache, else downloaded into it.

    Raises :class:`Missing` when the repo does not have the file (or, offline, the cache does not), and
    :class:`HubError` for what no other file of the repo could fix: an unknown repo or revision, a gated
    repo without access, no network.
    """
    try:
        from huggingface_hub import errors, hf_hub_download  # (importing it sets its loggers' levels)
    except ImportError:
        raise HubError("reading Hub repos needs the huggingface_hub package: pip install huggingface_hub.") from None
    where = f"the Hub repo {repo}" + (f" at revision {revision}" if revision else "")
    try:
        with _quiet_retries():
            return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir(),
                                        local_files_only=offline(), library_name="vitfast"))
    except errors.GatedRepoError:
        raise HubError(f"{where} is gated: accept its terms on its Hub page, then log in (`hf auth login`) or set "
                       "HF_TOKEN.") from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"{where} does not exist (or is private): check the name, or log in (`hf auth login`, or "
                       "HF_TOKEN) if it is yours.") from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{where}: no such revision; pass a branch, tag or commit of the repo.") from None
    except errors.LocalEntryNotFoundError:
        if offline():
            raise Missing(filename, f"not in the cache {cache_dir()}, and HF_HUB_OFFLINE=1 forbids downloading") \
                from None
        raise HubError(f"cannot reach the Hub for {filename} of {where}, and the cache {cache_dir()} does not hold "
                       "it: check the network (or HF_ENDPOINT), or fill the cache on a machine that has one and "
                       "set HF_HUB_OFFLINE=1.") from None
    except (errors.EntryNotFoundError, errors.RemoteEntryNotFoundError):
        raise Missing(filename, "not in the repo") from None
    except errors.HfHubHTTPError as exc:
        raise HubError(f"the Hub refused {filename} of {where} ({' '.join(str(exc).split())[:200]}).") from None


@contextlib.contextmanager
def _quiet_retries():
    """huggingface_hub retries a request that fails to connect (with back-off, about 25 s) and logs a warning
    per try; the retries stay, the warnings go: what failed is said once, in vitfast's error."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def download_first(repo: str, candidates: Sequence[str], revision: str | None = None) -> Path:
    """The first of `candidates` that `repo` has (downloaded); HubError naming each one tried and why not."""
    tried = []
    for name in candidates:
        try:
            return download(repo, name, revision)
        except Missing as missing:
            tried.append(f"{name} ({missing.why})")
    raise HubError(f"the Hub repo {repo}{' at revision ' + revision if revision else ''} has none of the files "
                   f"vitfast reads: tried {'; '.join(tried)}. " + _fix())


def _fix() -> str:
    if offline():
        return ("Download it once with network (unset HF_HUB_OFFLINE), or check the name and tag "
                "(`vitfast train --list-models --pretrained`).")
    return "Check the name and tag (`vitfast train --list-models --pretrained`) or pass the repo as hf-hub:ORG/NAME."
