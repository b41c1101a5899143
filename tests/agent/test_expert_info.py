"""One description per expert (``agent.experts.info``): from its settings section, the same
whether the model is loaded (the daemon) or not (``edgeroute route``, profile resolution)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from agent.expert_settings import CloudExpertSettings, LocalExpertSettings
from agent.experts.info import describe_experts
from agent.experts.local import LocalExpert
from agent.profiles import Profile, ProfileSet, resolve
from agent.settings import SMOLLM2_DEFAULT, Settings
from cloud_bridge.usage import Prices


def _settings() -> Settings:
    return Settings(
        local_experts=[LocalExpertSettings(name="tiny", model=SMOLLM2_DEFAULT, n_ctx=1024),
                       LocalExpertSettings(name="caller",
                                           model="/m/Qwen2.5-3B-Instruct-Q4_K_M.gguf",
                                           chat_format="chatml-function-calling")],
        cloud_experts=[CloudExpertSettings(
            name="big", base_url="http://127.0.0.1:9/v1", model="gpt-4o", profile="mixtral",
            input_usd_per_mtok=2.5, output_usd_per_mtok=10.0, cached_input_usd_per_mtok=1.25,
            context_tokens=4096, tools=False, modalities=["image"], fallback_to_local=False)])


def test_every_configured_expert_is_described_from_its_settings_local_first() -> None:
    infos = describe_experts(_settings())
    assert list(infos) == ["tiny", "caller", "big"]
    tiny, caller, big = infos.values()
    assert (tiny.kind, tiny.model, tiny.profile, tiny.context_tokens) == (
        "local", SMOLLM2_DEFAULT, None, 1024)
    assert not tiny.tools and caller.tools  # tools only with a function-calling format
    assert tiny.prices == Prices() and tiny.fallback_to_local
    assert (big.kind, big.model, big.profile, big.context_tokens) == (
        "cloud", "gpt-4o", "mixtral", 4096)
    assert big.prices == Prices(2.5, 10.0, 1.25)
    assert not big.tools and big.modalities == frozenset({"image"})
    assert not big.fallback_to_local
    assert big.extra["base_url"] == "http://127.0.0.1:9/v1"


def test_profile_resolution_reads_the_description() -> None:
    """The pinned profile and the model reference come through the one type: a pin wins
    over the model's own shipped profile, a GGUF file name finds its model's."""
    prof = {n: Profile(n, (0.1, 0.2), 0.0, kind=k, mean_p=0.5)
            for n, k in (("mixtral", "cloud"), ("gpt-4o", "cloud"),
                         ("Qwen2.5-3B-Instruct", "local"))}
    shipped = ProfileSet("enc", 2, prof)
    infos = describe_experts(_settings())
    assert resolve(infos["big"], shipped, {}).profile.name == "mixtral"
    assert resolve(replace(infos["big"], profile=None), shipped, {}).profile.name == "gpt-4o"
    r = resolve(infos["caller"], shipped, {})
    assert (r.profile.name, r.source) == ("Qwen2.5-3B-Instruct", "shipped")


def test_a_loaded_local_expert_is_described_as_its_settings_are(smollm_gguf: Path) -> None:
    """The daemon's loaded expert and the settings-only description agree on everything
    routing reads (the model as configured, not the file it resolved to: the answer's
    ``system_fingerprint`` is the same for ``edgeroute route`` and the daemon); only what
    loading found is added."""
    cfg = LocalExpertSettings(name="tiny", model=SMOLLM2_DEFAULT, n_ctx=1024, n_parallel=2)
    described = describe_experts(Settings(local_experts=[cfg], cloud_experts=[]))["tiny"]
    expert = LocalExpert.load(cfg, smollm_gguf)
    try:
        loaded = expert.info
        assert loaded.extra["path"] == str(smollm_gguf) and loaded.concurrency == 2
        assert replace(loaded, extra={}, concurrency=1) == described
        assert loaded.fingerprint == described.fingerprint
    finally:
        import asyncio

        asyncio.run(expert.aclose())
