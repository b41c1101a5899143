"""``edgeroute pull hf:OWNER/REPO/FILE.gguf [--revision R] [--sha256 H]``: download a GGUF
into the cache ahead of time, for a device that will run offline, and print the setting
that uses it.

A command of its own (not part of ``agent.hub_models``): it needs the settings (where the
cache is) and the file verification (``agent.model_files``), which themselves use what a
model reference is; the modules it calls stay free of one another.
"""

from __future__ import annotations

import argparse

from agent.errors import ModelFileError
from agent.file_digest import sha256_file
from agent.model_files import resolve_hub
from agent.model_refs import EXAMPLE, HubRef, parse_ref
from agent.settings import load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", help=f"hf:OWNER/REPO/FILE.gguf, e.g. {EXAMPLE}")
    parser.add_argument("--revision", default=None,
                        help="branch, tag or commit (default: the reference's @REVISION, "
                             "else main)")
    parser.add_argument("--sha256", default=None,
                        help="expected sha256 of the file; refuse it on mismatch")


def run(args: argparse.Namespace) -> int:
    ref = parse_ref(args.reference)
    if args.revision and ref.revision and args.revision != ref.revision:
        raise ModelFileError(f"--revision {args.revision} contradicts the reference's "
                             f"@{ref.revision}; give one of them")
    if args.revision:
        ref = HubRef(ref.repo_id, ref.filename, args.revision)
    cache_dir = load_settings().paths.cache_dir
    path = resolve_hub(str(ref), args.sha256, cache_dir)
    digest = args.sha256.lower() if args.sha256 else sha256_file(path)
    print(f"{ref}: {path} ({path.stat().st_size / 1e6:.0f} MB, sha256 {digest})")
    print(f'use it: EDGEROUTE_LOCAL_EXPERTS=\'[{{"name": "NAME", "model": "{ref}", '
          f'"sha256": "{digest}"}}]\'')
    return 0
