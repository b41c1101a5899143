"""Ability profiles shared through the fleet database: one device fits a profile
(``edgeroute experts calibrate``, paid for once), publishes it (``edgeroute profile
publish``), and every device picks it up on its next start or reload.

Why a file in between: the router loads profiles from disk (``agent.profile_router``), so a
device that cannot reach the database routes with the profiles it fetched last, and the
router never waits on the network. A fetch writes ``<data_dir>/fleet-profiles/<encoder
id>.json`` atomically, one file per query tower, holding the newest published profile of
each expert name; profile resolution uses it after the device's own (source ``fleet``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.errors import BundleError, LedgerConfigError, LedgerUnavailableError
from agent.fleet_db import FleetConfig, FleetDb
from agent.profiles import DEVICE_PROFILES_NAME, FLEET_PROFILES_DIR, ProfileSet

log = logging.getLogger("edgeroute.fleet")

LATEST_SQL = """
SELECT DISTINCT ON (encoder_id, name) encoder_id, name, profile
FROM edgeroute_profiles ORDER BY encoder_id, name, id DESC
"""


def publish(cfg: FleetConfig, data_dir: Path, names: Sequence[str] = ()) -> list[str]:
    """Publish this device's fitted profiles (``names``; default all of them) to the fleet.
    Raises BundleError when there is nothing to publish, LedgerUnavailableError offline."""
    path = Path(data_dir) / DEVICE_PROFILES_NAME
    if not path.is_file():
        raise BundleError(f"{path}: no profiles fitted on this device; run `edgeroute experts "
                          "calibrate NAME` first")
    fitted = ProfileSet.read(path)
    missing = sorted(set(names) - set(fitted.profiles))
    if missing:
        raise BundleError(f"{path} holds no profile for {', '.join(missing)}; it has "
                          f"{', '.join(sorted(fitted.profiles)) or 'none'}")
    chosen = [fitted.profiles[n] for n in (names or sorted(fitted.profiles))]
    db = FleetDb(cfg)
    try:
        now = time.time()
        for p in chosen:
            db.execute("INSERT INTO edgeroute_profiles (encoder_id, name, profile, device_id, "
                       "published_ts) VALUES (%s, %s, %s::jsonb, %s, %s)",
                       (fitted.encoder_id, p.name, json.dumps(p.as_dict()), cfg.device_id, now))
    finally:
        db.close()
    return [p.name for p in chosen]


def fetch(cfg: FleetConfig, data_dir: Path) -> int:
    """Write the fleet's newest profiles into ``data_dir``; returns how many."""
    db = FleetDb(cfg)
    try:
        rows = db.execute(LATEST_SQL)
    finally:
        db.close()
    by_encoder: dict[str, list[Any]] = {}
    for encoder_id, _, profile in rows:
        by_encoder.setdefault(str(encoder_id), []).append(profile)
    folder = Path(data_dir) / FLEET_PROFILES_DIR
    for encoder_id, items in by_encoder.items():
        dim = len(items[0]["theta"])
        raw = {"format": 1, "encoder_id": encoder_id, "dim": dim,
               "profiles": [p for p in items if len(p["theta"]) == dim]}
        ProfileSet.parse(raw, f"fleet profiles for {encoder_id[:12]}").write(
            folder / f"{encoder_id}.json")
    return sum(len(v) for v in by_encoder.values())


def profile_sync(settings: Any) -> Callable[[], None] | None:
    """With a fleet ledger, the fetch a start-up or reload runs before the router loads;
    it never raises: offline (or with a bad row) the router keeps the profiles fetched
    last, and says why in the log."""
    cfg = FleetConfig.from_settings(settings)
    if cfg is None:
        return None
    data_dir = Path(settings.paths.data_dir)

    def sync() -> None:
        try:
            n = fetch(cfg, data_dir)
        except (LedgerUnavailableError, LedgerConfigError, BundleError) as exc:
            log.warning("fleet profiles not fetched (%s); routing with the ones fetched last",
                        exc)
            return
        log.info("fetched %d fleet profile(s)", n)

    return sync
