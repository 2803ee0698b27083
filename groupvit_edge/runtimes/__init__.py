"""One Runtime interface, one module per backend; `open` picks the backend an artifact and this machine allow.

Each backend module implements `base.RuntimeBackend` (`backends.BACKEND_MODULES` lists them, and mypy checks each
against it); a backend with a throughput mode also implements `base.ThroughputBackend`. No code outside a
backend's module knows anything about that backend.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..artifact import MANIFEST_NAME, read_manifest
from ..errors import UserError
from ..options import OptionSpec, parse_value
from .backends import ARTIFACT_BACKENDS, BACKEND_MODULES, REFERENCE_BACKEND
from .base import ImageEncoding, Runtime, RuntimeBackend, ThroughputBackend
from .tuned import recorded_choice

BACKENDS = ARTIFACT_BACKENDS + (REFERENCE_BACKEND,)     # every registered backend, artifact backends first


def backend_module(name: str) -> RuntimeBackend:
    if name not in BACKEND_MODULES:
        raise UserError(f"backend {name!r} is unknown: use one of {', '.join(BACKEND_MODULES)}")
    return BACKEND_MODULES[name]


def available_backends() -> list[str]:
    """Backends whose packages are importable here. Every backend module imports without its package, so asking
    each one is safe on any machine."""
    return [name for name in BACKEND_MODULES if backend_module(name).is_installed()]


def is_artifact(source) -> bool:
    return isinstance(source, (str, Path)) and (Path(source) / MANIFEST_NAME).is_file()


def open(source, backend: str | None = None, **options) -> Runtime:  # noqa: A001 - mirrors io.open's role
    """An artifact directory → its best installed backend (or the configuration `tune` chose on this device, when
    neither a backend nor options are given); a checkpoint/model spec → the PyTorch reference.
    `options` are the chosen backend's runtime options (its `Options` fields)."""
    if backend is None and not options and is_artifact(source):
        backend, options = tuned_choice(source) or (None, {})    # what `tune` measured fastest on this device
    name, target = choose_backend(source, backend)
    return backend_module(name).open_runtime(target, backend_options(name, options, source))


def choose_backend(source, backend: str | None = None, verify: bool = True) -> tuple[str, object]:
    """(backend name, what its open_runtime takes: the manifest — its files' sha256 checked unless `verify=False`
    — or the model spec for the reference)."""
    if isinstance(source, (str, Path)) and Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        read_manifest(source, verify)   # neither artifact nor checkpoint: let the manifest check say what is missing
    if not is_artifact(source):
        if backend not in (None, REFERENCE_BACKEND):
            raise UserError(f"{source} is a model, not an artifact: export it first "
                            f"(groupvit-edge export --model {source} --out DIR) or use --backend torch")
        return REFERENCE_BACKEND, source
    manifest = read_manifest(source, verify)
    candidates = [backend] if backend else list(ARTIFACT_BACKENDS)
    reasons = []
    for name in candidates:
        module = backend_module(name)
        reason = module.unsupported_reason(manifest)
        if reason is None and module.is_installed():
            return name, manifest
        reasons.append((name, module, reason))
    usable = [(name, module) for name, module, reason in reasons if reason is None]
    if usable:
        name, module = usable[0]
        raise UserError(f"{source} needs {name}, which is not installed: {module.install_hint()}")
    detail = "; ".join(f"{name}: {reason}" for name, _, reason in reasons) or "no backend module"
    raise UserError(f"no backend can run {source} ({detail}); re-export it for a backend installed here")


def tuned_choice(artifact) -> tuple[str, dict] | None:
    """The configuration `tune` chose for this artifact on this device, where its backend and options exist."""
    recorded = recorded_choice(artifact)
    if recorded is None:
        return None
    backend, options = recorded
    if backend not in ARTIFACT_BACKENDS or not set(options) <= option_names(backend):
        return None
    return backend, options


def option_names(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(backend_module(name).Options)}


def throughput_options(name: str, streams) -> dict:
    """Backend `name`'s runtime options for `streams` windows in flight at once; none for a backend without a
    throughput mode (calls one window after another are then its throughput)."""
    module = backend_module(name)
    return module.throughput_options(streams) if isinstance(module, ThroughputBackend) else {}


def check_options(name: str, options, source=None, fix: str | None = None) -> None:
    """A UserError for the first of `options` that backend `name` does not take, naming the backends that take it;
    `fix` says what to do instead (default: drop it or choose one of those backends)."""
    accepted = option_names(name)
    for option in options:
        if option in accepted:
            continue
        owners = [other for other in BACKEND_MODULES if option in option_names(other)]
        if owners:
            raise UserError(f"runtime option {option!r} applies to {', '.join(owners)}, not to {name}"
                            f"{f', which runs {source}' if source is not None else ''}: "
                            f"{fix or f'drop it or choose --backend {owners[0]}'}")
        known = sorted(set().union(*(option_names(other) for other in BACKEND_MODULES)))
        raise UserError(f"runtime option {option!r} is unknown: use one of {', '.join(known)}")


def backend_options(name: str, options: dict, source=None):
    """`options` as backend `name`'s Options; a name it does not take is an error, never silently dropped. Text
    values (the CLI's, or the API's) go through the option's own parse, and every value is checked against the
    option's choices and bounds."""
    check_options(name, options, source)
    kind = backend_module(name).Options
    specs = {f.name: f.metadata.get("option") for f in dataclasses.fields(kind)}
    # The reference's Options are not CLI options: their values pass as given.
    return kind(**{option: _parsed(option, value, specs[option]) for option, value in options.items()})


def _parsed(option: str, value, spec: OptionSpec | None):
    return value if spec is None else parse_value(option, value, spec)


__all__ = ["BACKENDS", "ImageEncoding", "Runtime", "open", "available_backends", "backend_module", "backend_options",
           "check_options", "choose_backend", "is_artifact", "option_names", "throughput_options"]
