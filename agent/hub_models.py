"""Local experts from the Hugging Face Hub: ``hf:OWNER/REPO/FILE.gguf[@REVISION]``.

The way llama-cpp-python (``Llama.from_pretrained``), Ollama and LM Studio name a model.
``huggingface_hub.hf_hub_download`` does all of the fetching: the hub's cache layout,
resumable downloads, its own progress bar, and ``HF_HUB_OFFLINE=1`` (answer from the cache,
never touch the network). This module only picks the cache directory and turns the
library's exceptions into one-line ``ModelFileError`` messages naming the repository and
file. What a reference is (``HubRef``, ``parse_ref``) is ``agent.model_refs``'s; the sha256
pin is checked by ``agent.model_files`` as for any other GGUF, which calls :func:`fetch`.

Where files go: ``$HF_HUB_CACHE`` (or ``$HF_HOME/hub``) when the user set one, so a model
already pulled by other tools is reused; otherwise ``<paths.cache_dir>/huggingface``, since
the systemd unit runs with ``ProtectHome=yes`` and no home cache.

``edgeroute pull`` (``agent.pull_command``) downloads ahead of time, for a device that will
run offline. Nothing here imports ``huggingface_hub`` until a reference is fetched.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from agent.errors import ModelFileError, NotInHubCacheError
from agent.model_refs import HubRef

_HUB_CACHE_ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME")


def hub_cache_dir(cache_dir: Path) -> Path | None:
    """The hub cache to use: None lets huggingface_hub use the one the user configured."""
    if any(os.environ.get(k) for k in _HUB_CACHE_ENV):
        return None
    return cache_dir / "huggingface"


def _shown_cache(cache_dir: Path) -> str:
    from huggingface_hub import constants

    return str(hub_cache_dir(cache_dir) or constants.HF_HUB_CACHE)


def fetch(ref: HubRef, cache_dir: Path, *, local_only: bool = False) -> Path:
    """The file's path in the hub cache, downloaded first unless cached (or ``local_only``,
    or ``HF_HUB_OFFLINE=1``). Errors are one-line ModelFileErrors naming repository and file."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub import errors as hf_errors

    try:
        return Path(hf_hub_download(
            ref.repo_id, ref.filename, revision=ref.revision,
            cache_dir=hub_cache_dir(cache_dir), local_files_only=local_only,
        ))
    except hf_errors.LocalEntryNotFoundError as exc:
        where = _shown_cache(cache_dir)
        if local_only or constants.HF_HUB_OFFLINE:
            offline = " and HF_HUB_OFFLINE=1 forbids downloading it" * constants.HF_HUB_OFFLINE
            raise NotInHubCacheError(
                f"{ref.describe()} is not in the Hugging Face cache {where}{offline}; run "
                f"`edgeroute pull {ref}` while online (or copy that cache from a machine "
                "that has it)"
            ) from exc
        raise ModelFileError(
            f"cannot download {ref.describe()}: the Hugging Face Hub is unreachable and the "
            f"file is not in the cache {where}; connect, or copy that cache"
        ) from exc
    except hf_errors.GatedRepoError as exc:
        raise ModelFileError(
            f"repository {ref.repo_id} is gated: accept its terms on huggingface.co and log "
            "in (HF_TOKEN or `hf auth login`) to download "
            f"{ref.filename}") from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise ModelFileError(
            f"repository {ref.repo_id} is not on the Hugging Face Hub (or is private): "
            f"cannot download {ref.filename}; check the reference {ref}") from exc
    except hf_errors.RevisionNotFoundError as exc:
        raise ModelFileError(
            f"revision {ref.revision} of repository {ref.repo_id} does not exist: cannot "
            f"download {ref.filename}") from exc
    except hf_errors.EntryNotFoundError as exc:
        raise ModelFileError(
            f"repository {ref.repo_id} has no file {ref.filename}; check the file name on "
            f"https://huggingface.co/{ref.repo_id}") from exc
    except (hf_errors.HfHubHTTPError, OSError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(f"cannot download {ref.describe()}: {first}") from exc


def verified_stamp(path: Path, cache_dir: Path) -> Path:
    """Where model_files keeps the 'already hashed' stamp of a hub file: in our own cache
    dir, so nothing foreign lands in the hub cache's snapshot folders."""
    key = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:32]
    return cache_dir / "models" / "verified" / f"{key}.json"
