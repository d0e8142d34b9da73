"""Every name -> object registry is a ``latentlab.registry.Registry``: unknown names and taken names raise alike."""

from __future__ import annotations

import re
import typing

import pytest

from latentlab.configs import TASK_CONFIGS
from latentlab.configs.memory import MemoryMethod
from latentlab.data.converters import CONVERTERS, get_converter, register_converter
from latentlab.data.synthetic_reasoning import SYNTHETIC_TASKS, synthetic_splits
from latentlab.errors import ConfigError
from latentlab.memory.evaluate import METHODS
from latentlab.memory.evidence import ENCODERS
from latentlab.memory.retrievers import RETRIEVERS, NoRetrieval, make_retriever, register_retriever
from latentlab.registry import Registry, RegistryError
from latentlab.rl.policy_loss import AGGREGATIONS, POLICY_LOSSES
from latentlab.rl.rewards import REWARDS
from latentlab.tasks import TASKS

REGISTRIES = {
    "retrievers": RETRIEVERS,
    "converters": CONVERTERS,
    "synthetic_tasks": SYNTHETIC_TASKS,
    "tasks": TASKS,
    "methods": METHODS,
    "encoders": ENCODERS,
    "task_configs": TASK_CONFIGS,
    "policy_losses": POLICY_LOSSES,
    "aggregations": AGGREGATIONS,
    "rewards": REWARDS,
}

LOOKUPS = {
    "retrievers": make_retriever,
    "converters": get_converter,
    "synthetic_tasks": lambda name: synthetic_splits(name, seed=0, n_train=1, n_valid=1, n_test=1),
}
"""The public function that looks a name up in the registry, where there is one besides ``Registry.get``."""

REGISTER = {
    "retrievers": lambda name: register_retriever(name)(NoRetrieval),
    "converters": lambda name: register_converter(name, get_converter(name)),
}
"""The public function that adds to the registry, where there is one besides ``Registry.register``."""


def known_list(registry: Registry) -> str:
    return re.escape(f"(known: {', '.join(registry.names())})")


@pytest.mark.parametrize("which", sorted(REGISTRIES))
def test_is_a_nonempty_registry(which):
    registry = REGISTRIES[which]
    assert isinstance(registry, Registry)
    assert len(registry) > 0 and list(registry) == registry.names()
    assert all(name in registry for name in registry.names())


@pytest.mark.parametrize("which", sorted(REGISTRIES))
def test_unknown_name_raises_listing_the_known_ones(which):
    registry = REGISTRIES[which]
    pattern = rf"unknown {re.escape(registry.kind)} 'no-such-name' {known_list(registry)}"
    lookups = [registry.get] + ([LOOKUPS[which]] if which in LOOKUPS else [])
    for lookup in lookups:
        with pytest.raises(RegistryError, match=pattern) as err:
            lookup("no-such-name")
        assert isinstance(err.value, ConfigError)
    assert "no-such-name" not in registry


@pytest.mark.parametrize("which", sorted(REGISTRIES))
def test_registering_a_taken_name_raises_and_changes_nothing(which):
    registry = REGISTRIES[which]
    before = {name: registry.get(name) for name in registry}
    taken = registry.names()[0]
    pattern = rf"{re.escape(registry.kind)} '{re.escape(taken)}' is registered twice {known_list(registry)}"
    registers = [lambda name: registry.register(name, object())]
    registers += [REGISTER[which]] if which in REGISTER else []
    for register in registers:
        with pytest.raises(RegistryError, match=pattern):
            register(taken)
    assert {name: registry.get(name) for name in registry} == before
    assert NoRetrieval.name == "no_retrieval"  # a refused retriever class keeps its own name


def test_tasks_and_task_configs_have_the_same_names():
    assert sorted(TASKS) == sorted(TASK_CONFIGS)


def test_methods_are_the_memory_method_literal():
    assert sorted(METHODS) == sorted(typing.get_args(MemoryMethod))
