"""The CLI's generated flags: export options and runtime options come from their declarations
(`exporters.options`, each backend's `Options`), so a flag, its help and its checks live in one place."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import click

from .exporters.options import GROUPS
from .exporters.plan import backend_option_groups
from .options import check_number, spec_of
from .runtimes import ARTIFACT_BACKENDS, backend_module, option_names


def click_type(f: dataclasses.Field):
    spec = spec_of(f)
    if spec.choices:
        return click.Choice(spec.choices)
    annotation = str(f.type)
    if annotation.startswith("float"):
        return float
    if annotation.startswith("int") and spec.parse is None:
        return int
    return str


def click_option(f: dataclasses.Field, prefix_help: str = ""):
    spec = spec_of(f)
    shown = f.default if not isinstance(f.default, tuple) else "x".join(map(str, f.default))
    default_note = "" if f.default is None or f.default is False or f.default == () else f" [default: {shown}]"
    kwargs: dict[str, Any] = {"help": prefix_help + spec.help + default_note, "default": None}
    if spec.is_flag:
        kwargs.update(is_flag=True, default=False)
    elif spec.multiple:
        kwargs.update(multiple=True, default=(), type=str)
    else:
        kwargs["type"] = click_type(f)
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    return click.option(spec.flag(f.name), f.name, **kwargs)


def options_from(*kinds):
    """Click options for every field of the given option dataclasses."""
    def decorate(function):
        for kind in reversed(kinds):
            for f in reversed(dataclasses.fields(kind)):
                function = click_option(f)(function)
        return function
    return decorate


def export_option_kinds():
    return (*GROUPS.values(), *backend_option_groups().values())


def runtime_options(function):
    """One flag per runtime option of any backend (a flag several backends share appears once)."""
    seen = {}
    for name in ARTIFACT_BACKENDS:
        for f in dataclasses.fields(backend_module(name).Options):
            if "option" in f.metadata and f.name not in seen:
                seen[f.name] = f
    for f in reversed(list(seen.values())):
        function = click_option(f)(function)
    return function


def given(values: dict) -> dict:
    """The options the user gave: not None, not an unset flag, not an empty repeatable (0 is a given number)."""
    return {name: value for name, value in values.items()
            if value is not None and value is not False and value != ()}


def runtime_values(values: dict) -> dict:
    """Pop the runtime options out of a command's values, keeping the ones the user gave."""
    names = set().union(*(option_names(name) for name in ARTIFACT_BACKENDS))
    chosen = given({name: values.pop(name) for name in list(values) if name in names})
    if "threads" in chosen:
        chosen["threads"] = threads_callback(None, None, chosen["threads"])
    return chosen


def threads_callback(context, parameter, value):
    if value is None:
        return None
    check_number("--threads", value, minimum=1)
    cores = os.cpu_count() or value
    if value > cores:
        click.echo(f"note: --threads {value} is more than this machine's {cores} CPUs; using {cores}", err=True)
        return cores
    return value
