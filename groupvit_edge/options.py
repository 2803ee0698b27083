"""Options declared once, with their CLI flag, help, bounds and the targets they apply to; the CLI is generated
from these declarations (export options in `exporters.options`, runtime options in each backend's `Options`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from .errors import UserError


@dataclass(frozen=True)
class OptionSpec:
    help: str
    targets: tuple[str, ...] | None = None       # None: every target
    parse: Callable | None = None                # CLI text → value (also applied to API values that are str)
    choices: tuple[str, ...] | None = None
    multiple: bool = False
    is_flag: bool = False
    metavar: str | None = None
    minimum: float | None = None                 # inclusive bounds of a number; NaN is always refused
    maximum: float | None = None

    def flag(self, name: str) -> str:
        return "--" + name.replace("_", "-")


def option(default, help: str, **spec):
    return field(default=default, metadata={"option": OptionSpec(help, **spec)})


def spec_of(f: dataclasses.Field) -> OptionSpec:
    return f.metadata["option"]


def parse_value(name: str, value, spec: OptionSpec):
    """`value` for option `name`: text goes through the option's parse, then choices and bounds are checked."""
    if spec.parse is not None and isinstance(value, str):
        value = spec.parse(value)
    check_value(name, value, spec)
    return value


def check_value(name: str, value, spec: OptionSpec) -> None:
    """A UserError naming the option when `value` is not one of its choices or outside its bounds."""
    if spec.choices is not None and value is not None and str(value) not in spec.choices:
        raise UserError(f"{spec.flag(name)} {value!r} is not one of {', '.join(spec.choices)}")
    check_number(spec.flag(name), value, spec.minimum, spec.maximum)


def check_number(flag: str, value, minimum=None, maximum=None) -> None:
    """A UserError naming `flag` when a number is NaN or outside [minimum, maximum]."""
    if minimum is None and maximum is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if value != value or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (f"between {minimum} and {maximum}" if minimum is not None and maximum is not None else
                  f"at least {minimum}" if minimum is not None else f"at most {maximum}")
        raise UserError(f"{flag} {value} is out of range: it must be {bounds}")
