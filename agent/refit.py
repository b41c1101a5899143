"""Refit the device's ability profiles from its stored outcomes, behind a guard, reversibly.

    edgeroute profile update     refit, keep what predicts the held-back outcomes better
    edgeroute profile history    every update and revert with its before/after figures
    edgeroute profile revert     the device profiles file as it was before the last update

One expert's refit (``refit_expert``): its outcomes (``agent.outcomes``, on queries scored by
the current router's encoder) are split by a hash of the completion id into a fitting part
and a held-back part (``outcomes.refit_holdout``); a profile is fitted on the first
(``agent.ability_fit``, weighted by source) starting from its prior, and replaces the
current profile only when it predicts the held-back part better: a lower log-loss, by a
mean gain per held-back outcome larger than ``outcomes.refit_min_z`` standard errors of it,
and a Brier score no worse. So an update never makes the held-back
outcomes less likely, and a few outcomes a refit fits by chance change nothing.

The prior is the profile the expert had before it learned from outcomes (shipped, fleet,
calibrated or the prior of its kind), found through the history when the current one is
itself a refit: the fit always reads every stored outcome once, so none is counted twice.

Every update that fits anything is logged in the store's ``refits`` table with the figures,
and, when it changes the file, the bytes of ``<data_dir>/device-profiles.json`` before and
after: revert writes those bytes back (or removes the file if there was none), byte for
byte. A running daemon swaps new profiles in on reload, or itself when it runs the refits
on a schedule (``outcomes.refit_every_s``, :class:`RefitSchedule`).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent import ability_fit
from agent.errors import AgentError, BundleError
from agent.experts.info import ExpertInfo, describe_experts
from agent.metrics import Metrics
from agent.model_names import ModelNames
from agent.outcomes import Observations, OutcomeStore, Refit
from agent.profile_router import KIND, bundle_kind
from agent.profiles import (
    DEVICE_PROFILES_NAME,
    FLEET_PROFILES_DIR,
    PROFILES_NAME,
    Profile,
    ProfileSet,
    read_device_profiles,
    resolve,
)
from agent.router_bundle import BundleManifest, embedded_bundle

log = logging.getLogger("edgeroute.refit")

FITTED_PREFIX = "outcomes:"  # fitted_on of a profile refitted here
MIN_SIDE = 5  # outcomes each of the fitting and held-back parts needs
LOCK_NAME = "profile-update.lock"


class RefitError(AgentError):
    """``profile update`` / ``revert`` cannot do what was asked (no bundle, nothing to
    revert, a file changed behind its back)."""


@dataclass(frozen=True)
class Fit:
    """What the guard measured for one expert (log-loss in nats, Brier score)."""

    expert: str
    outcomes: int
    fitted: int
    held: int
    before: dict[str, float]
    after: dict[str, float]
    applied: bool
    prior: Profile
    profile: Profile

    def as_dict(self) -> dict[str, Any]:
        return {"outcomes": self.outcomes, "fitted": self.fitted, "held": self.held,
                "before": self.before, "after": self.after, "applied": self.applied,
                "prior": self.prior.as_dict(), "profile": self.profile.as_dict()}


@dataclass(frozen=True)
class UpdateResult:
    fits: dict[str, Fit]
    skipped: dict[str, str]  # expert -> why not refitted
    refit_id: int | None  # its history row (None: nothing was fitted)
    path: Path

    @property
    def applied(self) -> list[str]:
        return [n for n, f in self.fits.items() if f.applied]


def held_back(completion_id: str, share: float) -> bool:
    """Whether an answer's outcomes belong to the held-back part (the same in every run)."""
    digest = hashlib.sha256(b"holdout\0" + completion_id.encode()).hexdigest()
    return int(digest[:12], 16) / 16**12 < share


def figures(obs: Observations, profile: Profile) -> dict[str, float]:
    p = ability_fit.predict(obs.u, obs.d, profile)
    return {"log_loss": round(ability_fit.log_loss(p, obs.y, obs.w), 6),
            "brier": round(ability_fit.brier(p, obs.y, obs.w), 6)}


def held_back_gain(test: Observations, current: Profile, fitted: Profile
                   ) -> tuple[float, float]:
    """How much less surprised the refit is by the held-back outcomes than the current
    profile (mean log-loss difference per outcome, nats), and that mean's standard error."""
    before = ability_fit.log_losses(ability_fit.predict(test.u, test.d, current), test.y)
    after = ability_fit.log_losses(ability_fit.predict(test.u, test.d, fitted), test.y)
    return ability_fit.mean_and_se(before - after, test.w)


def refit_expert(name: str, kind: str, obs: Observations, current: Profile, prior: Profile,
                 holdout: float, l2: float, l2_bias: float, min_z: float = 2.0) -> Fit | str:
    """The guarded refit of one expert, or why it was not tried."""
    mask = np.array([held_back(i, holdout) for i in obs.ids], dtype=bool)
    train, test = obs.take(~mask), obs.take(mask)
    if len(train.ids) < MIN_SIDE or len(test.ids) < MIN_SIDE:
        return (f"{len(obs.ids)} outcomes: {len(train.ids)} to fit and {len(test.ids)} held "
                f"back, needs {MIN_SIDE} of each")
    counts = {s: train.sources.count(s) for s in sorted(set(train.sources))}
    fitted = ability_fit.fit_profile(
        train.u, train.d, train.y, prior, name, kind, l2,
        f"{FITTED_PREFIX} {len(train.ids)} ({', '.join(f'{k} {v}' for k, v in counts.items())})",
        l2_bias=l2_bias, weights=train.w)
    fitted = replace(fitted, length=current.length)
    before, after = figures(test, current), figures(test, fitted)
    gain, se = held_back_gain(test, current, fitted)
    after |= {"gain": round(gain, 6), "gain_se": round(se, 6)}
    # Better by more than its noise: a few held-back outcomes that a refit happens to fit
    # a little better (or a refit of the same outcomes, equal to its rounding) change nothing.
    better = gain > 0 and gain > min_z * se and after["brier"] <= before["brier"]
    return Fit(name, len(obs.ids), len(train.ids), len(test.ids), before, after, better,
               prior, fitted)


def bundle_profiles(settings: Any) -> ProfileSet:
    """The shipped profiles of the configured (or embedded) irt bundle; no model loaded."""
    configured = settings.router.bundle
    path = (embedded_bundle() if configured is None or str(configured).lower() == "none"
            else Path(configured))
    if path is None:
        raise RefitError("profile update needs an irt router bundle (router.bundle)")
    manifest = BundleManifest.read(Path(path))
    if bundle_kind(manifest) != KIND:
        raise RefitError(f"router bundle {path} is a {bundle_kind(manifest)!r} bundle: only "
                         "an irt bundle has profiles to refit")
    return ProfileSet.read(Path(path) / PROFILES_NAME)


def base_prior(current: Profile, history: list[Refit]) -> Profile:
    """The profile ``current`` was refitted from, if it is a refit (else itself)."""
    if not current.fitted_on.startswith(FITTED_PREFIX):
        return current
    mine = current.as_dict()
    for r in history:
        fit = r.summary.get("experts", {}).get(current.name)
        if r.action == "update" and fit and fit.get("applied") and fit.get("profile") == mine:
            (prior,) = ProfileSet.parse({"format": 1, "encoder_id": "",
                                         "dim": len(current.theta), "profiles": [fit["prior"]]},
                                        "refit history").profiles.values()
            return prior
    return current


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """One update or revert at a time on a device (CLI and daemon schedule alike)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_NAME, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_bytes(path: Path, data: bytes | None) -> None:
    """Atomically: ``data`` as the file's whole content, or no file (None)."""
    if data is None:
        path.unlink(missing_ok=True)
        return
    fd, tmp = tempfile.mkstemp(prefix=".profiles-", dir=path.parent)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def update(settings: Any, store: OutcomeStore, *, only: list[str] | None = None) -> UpdateResult:
    """``edgeroute profile update``: refit every configured expert (``only``: these) with
    enough outcomes; write the ones the guard keeps; log it. Raises RefitError."""
    o = settings.outcomes
    shipped = bundle_profiles(settings)
    data_dir = Path(settings.paths.data_dir)
    path = data_dir / DEVICE_PROFILES_NAME
    experts = list(describe_experts(settings).values())
    unknown = sorted(set(only or ()) - {e.name for e in experts})
    if unknown:
        raise RefitError(f"{', '.join(unknown)}: not configured; configured: "
                         f"{', '.join(e.name for e in experts)}")
    with _locked(data_dir):
        before_bytes = _read_bytes(path)
        device, note = read_device_profiles(path, shipped.encoder_id)
        if note:
            log.warning("%s", note)
        fleet, _ = read_device_profiles(data_dir / FLEET_PROFILES_DIR /
                                        f"{shipped.encoder_id}.json", shipped.encoder_id)
        observed = store.observations(shipped.encoder_id)
        history = store.refits()
        fits, skipped = _fit_all(experts, only, shipped, device, fleet, observed, history, o)
        applied = [f.profile for f in fits.values() if f.applied]
        after_bytes = before_bytes
        if applied:
            base = (ProfileSet(shipped.encoder_id, shipped.dim, dict(device)) if not note
                    else ProfileSet(shipped.encoder_id, shipped.dim))
            base.with_profiles(applied).write(path)
            after_bytes = path.read_bytes()
        rid = None
        if fits:
            summary = {"experts": {n: f.as_dict() for n, f in fits.items()},
                       "skipped": skipped, "encoder": shipped.encoder_id}
            rid = store.add_refit("update", bool(applied), summary,
                                  before_bytes if applied else None,
                                  after_bytes if applied else None)
    return UpdateResult(fits, skipped, rid, path)


def _fit_all(experts: list[ExpertInfo], only: list[str] | None, shipped: ProfileSet,
             device: Mapping[str, Profile], fleet: Mapping[str, Profile],
             observed: Mapping[str, Observations], history: list[Refit],
             o: Any) -> tuple[dict[str, Fit], dict[str, str]]:
    fits: dict[str, Fit] = {}
    skipped: dict[str, str] = {}
    names = ModelNames.of()
    for e in experts:
        if only and e.name not in only:
            continue
        if e.profile is not None:
            skipped[e.name] = f"its profile setting pins {e.profile!r}; unset it to learn"
            continue
        obs = observed.get(e.name)
        n = 0 if obs is None else len(obs.ids)
        if obs is None or n < o.refit_min_outcomes:
            skipped[e.name] = f"{n} outcomes, needs {o.refit_min_outcomes}"
            continue
        current = resolve(e, shipped, device, fleet, names).profile
        got = refit_expert(e.name, e.kind, obs, current, base_prior(current, history),
                           o.refit_holdout, o.refit_l2, o.refit_l2_bias, o.refit_min_z)
        if isinstance(got, str):
            skipped[e.name] = got
        else:
            fits[e.name] = got
    return fits, skipped


def revert(settings: Any, store: OutcomeStore, *, force: bool = False) -> Refit:
    """``edgeroute profile revert``: undo the newest applied update not yet undone; returns
    that update. Refuses (RefitError) when the file is not what that update wrote, unless
    ``force``: someone changed it since (``experts calibrate``), and their work would go."""
    data_dir = Path(settings.paths.data_dir)
    path = data_dir / DEVICE_PROFILES_NAME
    with _locked(data_dir):
        todo = [r for r in store.refits()
                if r.action == "update" and r.applied and r.undone_by is None]
        if not todo:
            raise RefitError("no applied profile update to revert (`edgeroute profile "
                             "history` lists them)")
        target = todo[0]
        now = _read_bytes(path)
        if now != target.after and not force:
            raise RefitError(f"{path} changed since update {target.id} wrote it; pass --force "
                             "to restore what it replaced anyway")
        if target.before is not None:
            try:
                ProfileSet.parse(json.loads(target.before), str(path))
            except (ValueError, BundleError) as exc:
                raise RefitError(f"update {target.id}'s saved file is unreadable: {exc}") from exc
        write_bytes(path, target.before)
        store.add_refit("revert", True, {"reverts": target.id}, now, target.before,
                        undoes=target.id)
    return target


@dataclass
class RefitSchedule:
    """The daemon's opt-in refits: every ``outcomes.refit_every_s``, when outcomes came in
    since the last run, refit off the event loop and, when the guard applied anything,
    reload the router (an atomic swap, as ``POST /admin/router/reload``)."""

    settings: Any
    store: OutcomeStore
    metrics: Metrics
    reload: Callable[[], object]
    _seen: int | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self) -> None:
        if self.settings.outcomes.refit_every_s is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        every = float(self.settings.outcomes.refit_every_s)
        while True:
            await asyncio.sleep(every)
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - the schedule outlives a failed refit
                log.exception("scheduled profile refit failed")
                self.metrics.refits.labels("failed").inc()

    async def run_once(self) -> UpdateResult | None:
        seen = int(self.store.summary()["outcomes"])
        if seen == self._seen:
            return None
        self._seen = seen
        result = await asyncio.to_thread(update, self.settings, self.store)
        if result.applied:
            await asyncio.to_thread(self.reload)
            log.info("profiles refitted from outcomes and swapped in: %s",
                     ", ".join(result.applied))
        self.metrics.refits.labels("applied" if result.applied else "kept" if result.fits
                                   else "nothing").inc()
        return result

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
