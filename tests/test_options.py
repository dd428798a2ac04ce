"""The pruning options are declared once (PruneOptions' fields): the `prune` and `sweep` flags and the
recipe's [prune] keys are generated from them and agree with them, both ways."""

import dataclasses

import click
import pytest

from onnxprune.cli import cli_flag
from onnxprune.cli.prune_cmd import command as prune_command
from onnxprune.cli.sweep_cmd import NOT_SWEPT
from onnxprune.cli.sweep_cmd import command as sweep_command
from onnxprune.core.errors import Opt
from onnxprune.jobs.prune_job import PruneOptions, option_fields
from onnxprune.jobs.recipe import SCHEMA, from_dict
from onnxprune.prune.allocate import DEFAULT_MIN_PARAMS
from onnxprune.prune.prune_pass import PrunePass

FIELDS = {f.name: f for f in dataclasses.fields(PruneOptions)}
KINDS = option_fields()


def _params(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_field_has_a_flag_with_its_default_and_choices(name):
    f, option = FIELDS[name], _params(prune_command)[name]
    meta = f.metadata
    assert option.help == meta["help"] and meta["help"]
    default = f.default if meta["cli_default"] is dataclasses.MISSING else meta["cli_default"]
    if KINDS[name] is bool:
        assert option.is_flag and f.default is False
    elif KINDS[name] is list:
        assert option.multiple and f.default_factory is list
    else:
        assert option.default == default
    choices = getattr(option.type, "choices", None)
    assert tuple(choices or ()) == meta["choices"]
    assert cli_flag(Opt(f"prune.{name}")) in option.opts  # errors name the flag the command has


def test_flags_and_recipe_keys_are_exactly_the_fields():
    prune_flags = set(_params(prune_command))
    assert set(FIELDS) <= prune_flags and set(SCHEMA["prune"]) == set(FIELDS)
    assert set(FIELDS) & set(_params(sweep_command)) == set(FIELDS) - set(NOT_SWEPT)
    for section, keys in SCHEMA.items():  # no other flag of `prune` or recipe key is a pruning option
        if section != "prune":
            assert not set(keys) & set(FIELDS), section
    kinds = {float: (int, float), int: int, bool: bool, str: str, list: list}
    assert all(SCHEMA["prune"][k] == kinds[KINDS[k]] for k in FIELDS)


def test_min_params_has_one_default():
    assert _params(prune_command)["min_params"].default == PruneOptions().min_params == DEFAULT_MIN_PARAMS
    assert PrunePass().min_params == DEFAULT_MIN_PARAMS


def test_a_recipe_takes_every_field():
    values = {"sparsity": 0.6, "pattern": "4x4", "scope": "global", "criterion": "magnitude", "overrides": ["a*=0.2"],
              "skip": ["b*"], "min_params": 7, "nm_remainder": "pad", "steps": 3, "initial_sparsity": 0.1, "t0": 2,
              "dt": 2, "hooks": [], "fold_constants": True, "calib_samples": 5, "sequential": True, "repair": "none",
              "round_to": 4, "reinit": False, "quantize": "fp16", "quantize_skip": ["head*"], "channel_unit": "channel", "granularity": "layer",
              "allocation": "uniform", "owl_lambda": 0.1, "owl_m": 4.0}
    unset = {"budget": None, "sensitivity": None}  # only with allocation = "sensitivity" (see test_sensitivity.py)
    assert set(values) | set(unset) == set(FIELDS)
    assert dataclasses.asdict(from_dict({"prune": values}).prune) == {**values, **unset}
