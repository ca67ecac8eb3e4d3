"""Components are found by name; unknown names and parameters fail with the allowed values listed."""

import pytest

from moelab.core import registry
from moelab.core.errors import ConfigError, UnknownComponentError


def test_every_kind_has_its_baseline():
    assert "none" in registry.names("prefetch")
    assert "lru" in registry.names("cache")
    assert "gpu_only" in registry.names("balancer")
    assert "autoregressive" in registry.names("decoding")
    assert "builtin" in registry.names("workload")
    assert "local" in registry.names("logger")
    assert {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss", "phimoe"} <= set(
        registry.names("arch")
    )


def test_unknown_name_lists_registered_names():
    with pytest.raises(UnknownComponentError) as e:
        registry.build("cache", {"name": "lfu3"})
    assert "'lfu3'" in str(e.value) and "lru" in str(e.value)


def test_unknown_parameter_lists_accepted_ones():
    with pytest.raises(ConfigError) as e:
        registry.build("workload", {"name": "builtin", "max_new_tokenz": 3})
    assert "max_new_tokenz" in str(e.value) and "max_new_tokens" in str(e.value)


def test_every_component_has_a_yaml_file():
    """Adding a component is one .py and one .yaml: both must exist for each registered name."""
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf"
    groups = {"prefetch": "prefetch", "cache": "cache", "balancer": "balancer", "decoding": "decoding",
              "workload": "workload", "logger": "logger", "routing": "routing"}
    for kind, group in groups.items():
        for name in registry.names(kind):
            assert (conf / group / f"{name}.yaml").exists(), f"conf/{group}/{name}.yaml missing"


@pytest.mark.parametrize("kind", sorted(registry.KIND_PACKAGES))
def test_a_class_that_is_not_of_its_kind_is_refused(kind):
    """Registering checks the kind's base class, so a wrong class fails at import, naming the base it lacks."""
    class NotAComponent:
        pass

    with pytest.raises(TypeError) as e:
        registry.register(kind, "not_a_component")(NotAComponent)
    base = registry.base_class(kind)
    assert f"{base.__module__}.{base.__qualname__}" in str(e.value) and "'not_a_component'" in str(e.value)
    assert "not_a_component" not in registry.names(kind)


def test_every_registered_class_derives_from_its_kind_base():
    for kind in registry.KIND_PACKAGES:
        for name in registry.names(kind):
            assert issubclass(registry.get(kind, name), registry.base_class(kind)), (kind, name)
