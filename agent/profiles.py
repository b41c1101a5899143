"""Ability profiles: experts as data, not as outputs of a network.

An ``irt`` router bundle's ONNX graph maps a query to a vector ``u(q)`` in R^K and a
difficulty ``d(q)``; an expert is a profile ``(theta, bias)``, and

    P(expert answers q correctly) = sigmoid(u(q) . theta + bias - d(q))

(multidimensional item response theory, as in IRT-Router). Adding or refitting an expert
is writing a profile, never re-exporting the graph.

``profiles.json``::

    {"format": 1, "encoder_id": "<sha256 of the query tower>", "dim": K,
     "profiles": [{"name", "theta": [K floats], "bias", "kind": "local"|"cloud",
                   "fitted_on", "observations", "mean_p",
                   "length": {"bias", "sigma", "theta": [K floats], "observations"}}, ...]}

``length`` (optional) is the expert's answer-length model (``agent.answer_length``): what
prices its answers in the policy. A profile without one borrows its kind's prior's.

``encoder_id`` ties profiles to the query tower they were fitted against: a profile from
another tower lives in another space and is refused. ``mean_p`` (mean predicted P(correct)
over the queries it was fitted on) ranks profiles for the prior: an expert with no profile
gets the median-ability shipped profile of its kind.

Resolution for one configured expert, first hit wins (reported in /health and ``routing``):
``setting`` (the expert's ``profile`` setting names a shipped profile), ``device`` (a profile
fitted on this device by ``edgeroute experts calibrate``, kept in the data dir), ``fleet``
(one another device of the fleet published, ``agent.fleet_profiles``), ``shipped`` (a
shipped profile named like the expert's ``model``, or its name), ``prior``.

``shipped`` takes the names as written first, then the names users type for the same model
(``agent.model_names``: ``gpt-4o``, ``openai/gpt-4o``, ``Qwen2.5-3B-Instruct-Q4_K_M.gguf``):
the alias table's canonical name, else a shipped profile whose name normalises alike. A
model reached through a quantised file name gets a note: its profile was measured on the
full-precision model.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.answer_length import LengthModel
from agent.errors import BundleError
from agent.experts.info import ExpertInfo
from agent.model_names import ModelNames, is_lossy, name_key, quantisation

PROFILES_FORMAT = 1
PROFILES_NAME = "profiles.json"
DEVICE_PROFILES_NAME = "device-profiles.json"
FLEET_PROFILES_DIR = "fleet-profiles"  # <data_dir>/fleet-profiles/<encoder_id>.json
Source = Literal["setting", "device", "fleet", "shipped", "prior"]
PRIOR_HINT = "run `edgeroute experts calibrate {name}` to fit its own profile"
QUANT_HINT = ("{model!r} is a {quant} quantisation of {profile}, whose profile was measured at "
              "full precision: quantisation may cost it a little accuracy; run `edgeroute "
              "experts calibrate {name}` to fit its own profile")


def sigmoid(z: Any) -> np.ndarray:
    """The IRT link, written once: P(correct) from the logit u . theta + bias - d (a number
    or an array of them), clipped at +-40 so no exp overflows."""
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0))))


@dataclass(frozen=True)
class Profile:
    """One expert's ability in the router's latent space."""

    name: str
    theta: tuple[float, ...]
    bias: float
    kind: str = "cloud"
    fitted_on: str = ""
    observations: int = 0
    mean_p: float | None = None
    length: LengthModel | None = None  # its answers' lengths; None: not measured

    def logit(self, u: Sequence[float], d: float) -> float:
        return sum(a * b for a, b in zip(u, self.theta, strict=True)) + self.bias - d

    def p_correct(self, u: Sequence[float], d: float) -> float:
        return float(sigmoid(np.float64(self.logit(u, d))))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["theta"] = [round(float(t), 7) for t in self.theta]
        out["bias"] = round(float(self.bias), 7)
        if self.length is None:
            del out["length"]
        else:
            out["length"] = self.length.as_dict()
        return out


@dataclass(frozen=True)
class ProfileSet:
    """The profiles of one file, all in the space of one query tower."""

    encoder_id: str
    dim: int
    profiles: dict[str, Profile] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> ProfileSet:
        """Parse and check a profiles file; a bad one is a BundleError naming the file."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise BundleError(f"{path}: profiles file is missing") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{path}: unreadable profiles file ({exc}); rewrite it with "
                              "`edgeroute profile fit` or `edgeroute experts calibrate`") from exc
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: Any, where: str) -> ProfileSet:
        if not isinstance(raw, dict) or raw.get("format") != PROFILES_FORMAT:
            raise BundleError(f"{where}: not a profiles file of format {PROFILES_FORMAT}")
        try:
            dim = int(raw["dim"])
            encoder_id = str(raw["encoder_id"])
            items = list(raw["profiles"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: profiles file lacks or mangles {exc}") from exc
        profiles: dict[str, Profile] = {}
        for i, item in enumerate(items):
            p = _profile(item, dim, f"{where}: profile {i}")
            if p.name in profiles:
                raise BundleError(f"{where}: profile {p.name!r} appears twice")
            profiles[p.name] = p
        return cls(encoder_id, dim, profiles)

    def as_dict(self) -> dict[str, Any]:
        return {"format": PROFILES_FORMAT, "encoder_id": self.encoder_id, "dim": self.dim,
                "profiles": [p.as_dict() for p in self.profiles.values()]}

    def write(self, path: Path) -> None:
        """Atomically: a reader sees the old file or the new one, never half of one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".profiles-", dir=path.parent)
        os.fchmod(fd, 0o644)  # read by the service's own user; holds no secret
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.as_dict(), f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def with_profiles(self, new: Iterable[Profile]) -> ProfileSet:
        merged = dict(self.profiles)
        for p in new:
            if len(p.theta) != self.dim:
                raise BundleError(f"profile {p.name!r} has {len(p.theta)} dimensions, not "
                                  f"{self.dim}")
            merged[p.name] = p
        return ProfileSet(self.encoder_id, self.dim, merged)

    def prior(self, kind: str) -> Profile:
        """The median-ability profile of ``kind`` (of all profiles when none has it)."""
        pool = [p for p in self.profiles.values() if p.kind == kind] or list(
            self.profiles.values())
        if not pool:
            raise BundleError("the profiles file holds no profile to take a prior from")
        ranked = sorted(pool, key=lambda p: (p.mean_p if p.mean_p is not None else p.bias,
                                             p.name))
        return ranked[(len(ranked) - 1) // 2]

    def length_prior(self, kind: str) -> LengthModel | None:
        """For an expert whose profile has no length model: the median-length model of its
        kind's profiles (of all profiles when none of its kind has one); None: no profile
        has one, so answers are priced at max_tokens."""
        have = [p.length for p in self.profiles.values() if p.length is not None]
        own = [p.length for p in self.profiles.values()
               if p.length is not None and p.kind == kind]
        pool = sorted(own or have, key=lambda m: m.bias)
        return pool[(len(pool) - 1) // 2] if pool else None


def _profile(item: Any, dim: int, where: str) -> Profile:
    try:
        theta = tuple(float(t) for t in item["theta"])
        bias = float(item["bias"])
        name = str(item["name"])
        mean_p = item.get("mean_p")
        length = item.get("length")
        prof = Profile(name=name, theta=theta, bias=bias, kind=str(item.get("kind", "cloud")),
                       fitted_on=str(item.get("fitted_on", "")),
                       observations=int(item.get("observations", 0)),
                       mean_p=None if mean_p is None else float(mean_p),
                       length=None if length is None else LengthModel.parse(
                           length, dim, f"{where} ({name!r})"))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{where} lacks or mangles {exc}") from exc
    if len(theta) != dim or not all(math.isfinite(t) for t in (*theta, bias)):
        raise BundleError(f"{where} ({name!r}): theta must be {dim} finite numbers, bias finite")
    if not name or prof.kind not in ("local", "cloud"):
        raise BundleError(f"{where}: needs a name and kind 'local' or 'cloud'")
    return prof


@dataclass(frozen=True)
class Resolved:
    profile: Profile
    source: Source
    note: str | None = None
    length: LengthModel | None = None  # the profile's, else its kind's prior's

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"profile": self.profile.name, "profile_source": self.source}
        if self.note:
            out["hint"] = self.note
        return out


def model_key(model: str) -> str:
    """The profile name a model reference maps to: the file or id without path or suffix."""
    base = model.split(":", 1)[1] if model.startswith("builtin:") else model
    base = base.rsplit("/", 1)[-1]
    return base[: -len(".gguf")] if base.lower().endswith(".gguf") else base


def _shipped_alias(expert: ExpertInfo, shipped: ProfileSet,
                   names: ModelNames) -> Resolved | None:
    """The shipped profile the expert's model (or name) means by another spelling."""
    by_key = {name_key(p): p for p in shipped.profiles}
    for ref in (expert.model, expert.name):
        found = names.canonical(ref)
        found = found if found in shipped.profiles else by_key.get(name_key(ref))
        if found is None:
            continue
        quant = quantisation(ref)
        note = (QUANT_HINT.format(model=ref, quant=quant, profile=found, name=expert.name)
                if is_lossy(quant) else None)
        return Resolved(shipped.profiles[found], "shipped", note)
    return None


def resolve(expert: ExpertInfo, shipped: ProfileSet, device: Mapping[str, Profile],
            fleet: Mapping[str, Profile] | None = None,
            names: ModelNames | None = None) -> Resolved:
    """One expert's profile, by the order in the module docstring (``fleet``: profiles
    other devices published; ``names``: the alias table, default
    :data:`agent.model_names.ALIASES`), with the length model that prices its answers (the
    profile's own, else its kind's prior, ``ProfileSet.length_prior``)."""
    found = _resolve(expert, shipped, device, fleet, names)
    if found.profile.length is not None:
        return replace(found, length=found.profile.length)
    return replace(found, length=shipped.length_prior(expert.kind))


def _resolve(expert: ExpertInfo, shipped: ProfileSet, device: Mapping[str, Profile],
             fleet: Mapping[str, Profile] | None, names: ModelNames | None) -> Resolved:
    if expert.profile is not None:
        if expert.profile not in shipped.profiles:
            raise BundleError(
                f"expert {expert.name!r}: profile {expert.profile!r} is not shipped with the "
                f"router bundle; choose one of {sorted(shipped.profiles)} or unset it")
        return Resolved(shipped.profiles[expert.profile], "setting")
    if expert.name in device:
        return Resolved(device[expert.name], "device")
    if fleet and expert.name in fleet:
        return Resolved(fleet[expert.name], "fleet")
    for key in (expert.model, model_key(expert.model), expert.name):
        if key in shipped.profiles:
            return Resolved(shipped.profiles[key], "shipped")
    aliased = _shipped_alias(expert, shipped, names or ModelNames.of())
    if aliased is not None:
        return aliased
    prior = shipped.prior(expert.kind)
    return Resolved(prior, "prior", PRIOR_HINT.format(name=expert.name))


def read_device_profiles(path: Path, encoder_id: str) -> tuple[dict[str, Profile], str | None]:
    """Profiles fitted on this device for this tower, and a warning when some are ignored.
    A missing file is no profiles; a corrupt one is an error (it was ours to write)."""
    if not Path(path).is_file():
        return {}, None
    found = ProfileSet.read(path)
    if found.encoder_id != encoder_id:
        return {}, (f"{path}: fitted for another router (encoder {found.encoder_id[:12]}...); "
                    "ignored: recalibrate the experts with `edgeroute experts calibrate`")
    return dict(found.profiles), None
