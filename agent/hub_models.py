"""Local experts from the Hugging Face Hub: ``hf:OWNER/REPO/FILE.gguf[@REVISION]``.

The way llama-cpp-python (``Llama.from_pretrained``), Ollama and LM Studio name a model.
``huggingface_hub.hf_hub_download`` does all of the fetching: the hub's cache layout,
resumable downloads, its own progress bar, and ``HF_HUB_OFFLINE=1`` (answer from the cache,
never touch the network). This module only parses the reference, picks the cache directory,
and turns the library's exceptions into one-line ``ModelFileError`` messages naming the
repository and file. The sha256 pin is checked by ``model_files.verify_file`` as for any
other GGUF.

Where files go: ``$HF_HUB_CACHE`` (or ``$HF_HOME/hub``) when the user set one, so a model
already pulled by other tools is reused; otherwise ``<paths.cache_dir>/huggingface``, since
the systemd unit runs with ``ProtectHome=yes`` and no home cache.

``edgeroute pull`` (``add_arguments``/``run`` below) downloads ahead of time, for a device
that will run offline. Nothing here imports ``huggingface_hub`` until a reference is fetched.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ModelFileError, NotInHubCacheError

HF_PREFIX = "hf:"
EXAMPLE = "hf:tensoropera/Fox-1-1.6B-Instruct-v0.1-GGUF/Fox-1-1.6B-Instruct-v0.1-Q4_K_M.gguf"
_HUB_CACHE_ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME")
_NAME = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?"
_REF = re.compile(
    rf"hf:(?P<repo>{_NAME}/{_NAME})/(?P<file>[^@\s]+\.gguf)(?:@(?P<rev>[^\s]+))?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class HubRef:
    """One GGUF file of one Hugging Face model repository, at a revision (None: main)."""

    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_PREFIX}{self.repo_id}/{self.filename}{rev}"

    def describe(self) -> str:
        """For messages: 'file F of repository R (revision V)'."""
        rev = f" at revision {self.revision}" if self.revision else ""
        return f"file {self.filename} of repository {self.repo_id}{rev}"


def is_hub_ref(model: str) -> bool:
    return model.startswith(HF_PREFIX)


def parse_ref(text: str) -> HubRef:
    """``hf:OWNER/REPO/PATH/FILE.gguf[@REVISION]`` to a HubRef; anything else is a one-line
    ModelFileError naming the value."""
    m = _REF.fullmatch(text.strip())
    if m is None or ".." in m["file"].split("/") or m["file"].startswith("/"):
        raise ModelFileError(
            f"bad model reference {text!r}: write hf:OWNER/REPO/FILE.gguf[@REVISION], "
            f"e.g. {EXAMPLE}"
        )
    return HubRef(m["repo"], m["file"], m["rev"])


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


def resolve(model: str, sha256: str | None, cache_dir: Path, *, local_only: bool = False) -> Path:
    """An ``hf:`` model setting to a verified GGUF path (downloading it if allowed)."""
    from agent.model_files import verify_file

    ref = parse_ref(model)
    path = fetch(ref, cache_dir, local_only=local_only)
    try:
        return verify_file(path, sha256, stamp=verified_stamp(path, cache_dir))
    except ModelFileError as exc:
        raise ModelFileError(f"{ref}: {exc}") from exc


# ``edgeroute pull``: registered in agent.cli.AGENT_COMMANDS.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", help=f"hf:OWNER/REPO/FILE.gguf, e.g. {EXAMPLE}")
    parser.add_argument("--revision", default=None,
                        help="branch, tag or commit (default: the reference's @REVISION, "
                             "else main)")
    parser.add_argument("--sha256", default=None,
                        help="expected sha256 of the file; refuse it on mismatch")


def run(args: argparse.Namespace) -> int:
    from agent.model_files import sha256_file
    from agent.settings import load_settings

    ref = parse_ref(args.reference)
    if args.revision and ref.revision and args.revision != ref.revision:
        raise ModelFileError(f"--revision {args.revision} contradicts the reference's "
                             f"@{ref.revision}; give one of them")
    if args.revision:
        ref = HubRef(ref.repo_id, ref.filename, args.revision)
    cache_dir = load_settings().paths.cache_dir
    path = resolve(str(ref), args.sha256, cache_dir)
    digest = args.sha256.lower() if args.sha256 else sha256_file(path)
    print(f"{ref}: {path} ({path.stat().st_size / 1e6:.0f} MB, sha256 {digest})")
    print(f'use it: EDGEROUTE_LOCAL_EXPERTS=\'[{{"name": "NAME", "model": "{ref}", '
          f'"sha256": "{digest}"}}]\'')
    return 0
