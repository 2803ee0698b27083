"""The real TensorRT Python bindings, importable without TensorRT's libraries or a GPU.

NVIDIA's `tensorrt-cuXX-bindings` wheels (about 1 MB, on PyPI) hold the pybind11 extension module
`tensorrt_bindings/tensorrt.so`. It needs libnvinfer, libnvonnxparser and libnvinfer_plugin, which only
NVIDIA's own index serves; `stubs.c` beside this file defines the nine entry points the module takes from them,
and the stubs are compiled into the unpacked wheel next to `tensorrt.so`, whose RPATH/RUNPATH includes
`$ORIGIN`, so the loader finds them without LD_LIBRARY_PATH or preloading.

What this gives: every class, enum, method signature and property of that TensorRT version, and its
pure-Python helpers (`nptype`, `volume`). What it cannot give: a TensorRT object. The stubs return NULL, so
`Builder(Logger())` and `Runtime(Logger())` raise TypeError ("factory function returned nullptr") and nothing
built from them (networks, parsers, configs, engines) can be reached.

Each version runs in its own subprocess (two versions of one extension module cannot share a process, and the
test process must never see these stubs in place of a real TensorRT):

    result = run_with_bindings("10.3", "import tensorrt; print(tensorrt.__version__)")
    snapshot = api_snapshot("11.4")   # JSON-able; see describe_module for its layout

Everything downloaded or built lives in `cache_root()`; a version that cannot be fetched raises
`BindingsUnavailable`, which tests turn into a skip with its reason (`fetch_or_skip`; a failure instead when
GROUPVIT_EDGE_REQUIRE_TENSORRT_BINDINGS=1). `tensorrt_harness.fake` turns a snapshot into a recording stand-in for
the `tensorrt` module with exactly that version's API, for the builder and runtime flows no stub can run.

This package must not be called `tensorrt_bindings`: pytest puts tests/ first on sys.path, and the real
`tensorrt` package does `from tensorrt_bindings import *`.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# (label, pip requirement). 10.3 is JetPack 6's TensorRT; 10.16 is the newest 10.x on PyPI; 11.4 is the newest
# 11.x, whose cu12 and cu13 wheels hold the same tensorrt.so (the `tensorrt` metapackage picks cu13).
VERSIONS = [
    ("10.3", "tensorrt-cu12-bindings==10.3.0"),
    ("10.16", "tensorrt-cu12-bindings==10.16.1.11"),
    ("11.4", "tensorrt-cu13-bindings==11.4.0.106"),
]

STUBS_SOURCE = Path(__file__).with_name("stubs.c")
STUB_LIBRARIES = ("nvinfer", "nvonnxparser", "nvinfer_plugin")

# NVIDIA's `tensorrt` package (the tensorrt-cuXX sdist) is these two lines; product code does `import tensorrt`.
TENSORRT_SHIM = "from tensorrt_bindings import *\nfrom tensorrt_bindings import __version__\n"

DOWNLOAD_TIMEOUT_S = 600
NO_SIGNATURE = "<no signature>"


class BindingsUnavailable(Exception):
    """The wheel could not be downloaded, or this machine cannot build the stubs; the message says why."""


_UNAVAILABLE: dict[str, str] = {}   # label -> why its wheel could not be downloaded in this process


# ------------------------------------------------------------------------------------------- fetching

def cache_root() -> Path:
    default = Path.home() / ".cache" / "groupvit-edge-tests" / "tensorrt-wheels"
    return Path(os.environ.get("GROUPVIT_EDGE_TEST_CACHE", default))


def requirement(label: str) -> str:
    for known, pinned in VERSIONS:
        if known == label:
            return pinned
    raise KeyError(f"unknown TensorRT bindings version {label!r}; known: {[known for known, _ in VERSIONS]}")


def pinned_version(label: str) -> str:
    """The exact version the requirement pins, which is also the module's `__version__`."""
    return requirement(label).split("==", 1)[1]


def version_dir(label: str) -> Path:
    # Keyed by interpreter too: the wheel pip picks holds an extension module for this Python only.
    python_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / python_tag / requirement(label)


def fetch(label: str) -> Path:
    """The directory to put on sys.path so that `import tensorrt` gives the real bindings of this version.

    Downloads the wheel once, unpacks it, writes the `tensorrt` shim and compiles the stubs into it.
    Raises BindingsUnavailable when the wheel cannot be had here (no network, no wheel for this Python) or
    there is no C compiler; a broken stub or wheel is a plain error, since a skip would hide it.
    """
    if label in _UNAVAILABLE:   # asked once per process: offline, every pip run would wait out its retries
        raise BindingsUnavailable(_UNAVAILABLE[label])
    home = version_dir(label)
    home.mkdir(parents=True, exist_ok=True)
    site = home / "site"
    if not (site / "tensorrt_bindings").is_dir():
        try:
            wheel = _download(requirement(label), home)
        except BindingsUnavailable as reason:
            _UNAVAILABLE[label] = str(reason)
            raise
        _unpack(wheel, site)
    _write_shim(site)
    _build_stubs(site / "tensorrt_bindings", soname_major=pinned_version(label).split(".")[0])
    return site


REQUIRE_ENV = "GROUPVIT_EDGE_REQUIRE_TENSORRT_BINDINGS"


def fetch_or_skip(label: str) -> Path:
    """fetch() for tests: a version that cannot be had here skips the test with the reason — or fails it when
    GROUPVIT_EDGE_REQUIRE_TENSORRT_BINDINGS=1, which CI sets so that conformance can never pass by skipping."""
    import pytest
    try:
        return fetch(label)
    except BindingsUnavailable as reason:
        message = f"TensorRT {label} bindings unavailable: {reason}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ENV}=1)")
        pytest.skip(message)


def _download(pinned: str, home: Path) -> Path:
    wheels = sorted(home.glob("*.whl"))
    if wheels:
        return wheels[0]
    # No --platform/--python-version: pip then picks the wheel this interpreter can import
    # (10.3.0 is manylinux_2_17, later versions manylinux_2_28).
    with tempfile.TemporaryDirectory(dir=home) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--retries", "2", "--dest", scratch, pinned]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BindingsUnavailable(f"`pip download {pinned}` took more than {DOWNLOAD_TIMEOUT_S} s") from None
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise BindingsUnavailable(f"`pip download {pinned}` failed: {_last_line(done.stderr or done.stdout)}")
        # Moved out of the scratch directory only once complete, so an interrupted download is never reused.
        return Path(shutil.move(str(wheels[0]), home / wheels[0].name))


def _unpack(wheel: Path, site: Path) -> None:
    partial = site.with_name(site.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(partial)
    partial.rename(site)


def _write_shim(site: Path) -> None:
    shim = site / "tensorrt" / "__init__.py"
    if not shim.is_file() or shim.read_text() != TENSORRT_SHIM:
        shim.parent.mkdir(exist_ok=True)
        shim.write_text(TENSORRT_SHIM)


def _build_stubs(package: Path, soname_major: str) -> None:
    """Compile stubs.c once per library, named by the soname tensorrt.so asks for (libnvinfer.so.10, ...)."""
    digest = hashlib.sha256(STUBS_SOURCE.read_bytes()).hexdigest()
    built_from = package / "stubs.sha256"
    if built_from.is_file() and built_from.read_text() == digest:
        return
    compiler = shutil.which("cc")
    if compiler is None:
        raise BindingsUnavailable("no C compiler `cc` to build the stand-ins for TensorRT's libraries")
    for library in STUB_LIBRARIES:
        soname = f"lib{library}.so.{soname_major}"
        partial = package / f"{soname}.partial"
        subprocess.run([compiler, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(partial),
                        str(STUBS_SOURCE)], check=True, capture_output=True, text=True)
        partial.replace(package / soname)
    built_from.write_text(digest)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# ------------------------------------------------------------------------------------------- running

def run_with_bindings(label: str, code: str, timeout: float = 120, **run_options) -> subprocess.CompletedProcess:
    """Run Python `code` in a subprocess where `import tensorrt` is the real bindings of this version.

    Output is captured as text; the caller checks returncode. The directory goes on PYTHONPATH (ahead of any
    installed TensorRT) so that processes the code starts see the same bindings.
    """
    site = fetch(label)
    env = dict(run_options.pop("env", os.environ))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, **run_options)


def api_snapshot(label: str) -> dict:
    """The API of this version as JSON-able data (layout: describe_module), cached beside the wheel.

    The cache file is keyed by this file's digest, so a change to the introspection below takes effect at once.
    """
    harness_digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    cached = version_dir(label) / f"snapshot-{harness_digest}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    code = (f"import json, sys, tensorrt\nsys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
            f"from tensorrt_harness import describe_module\nprint(json.dumps(describe_module(tensorrt)))\n")
    done = run_with_bindings(label, code)
    if done.returncode != 0:
        raise RuntimeError(f"introspecting TensorRT {label} failed:\n{done.stderr}")
    snapshot = json.loads(done.stdout)
    partial = cached.with_name(cached.name + ".partial")
    partial.write_text(json.dumps(snapshot, indent=1, sort_keys=True))
    partial.replace(cached)
    return snapshot


def member(snapshot: dict, dotted: str) -> dict | None:
    """Look up "Class.name" in a snapshot, through the class's bases as Python would.

    Returns {"method": [signatures]}, {"property": {...}} or {"attribute": text}, or None when absent.
    """
    class_name, _, name = dotted.rpartition(".")
    pending = [class_name]
    while pending:
        described = snapshot["classes"].get(pending.pop(0))
        if described is None:
            continue
        for kind, key in (("method", "methods"), ("property", "properties"), ("attribute", "attributes")):
            if name in described[key]:
                return {kind: described[key][name]}
        pending.extend(described["bases"])
    return None


# ------------------------------------------------------------------- introspection (runs in the subprocess)
# Only the standard library (and numpy, for nptype) is used below: this module is imported next to the stubs.

def describe_module(module) -> dict:
    """Everything public in the `tensorrt` module.

    {"version": __version__,
     "attributes": {name: text},                 e.g. "float32": "DataType.FLOAT", "__version__": "10.3.0"
     "functions":  {name: [signature, ...]},     one signature per pybind11 overload
     "enums":      {qualname: {member: int}},    nested ones too, e.g. "ILogger.Severity"
     "classes":    {qualname: {"bases": [...], "methods": {name: [signature]},
                               "properties": {name: {"readable", "writable", "type"}}, "attributes": {...}}},
     "nptype":     {DataType member: numpy type name, or the error nptype raises}}
    Signatures are pybind11's, with the module prefix dropped ("Builder", not "tensorrt_bindings.tensorrt.Builder").
    A class lists only what it defines itself; member() follows the bases. "__init__" is listed only for classes
    Python can construct (Builder, Logger, ...); IBuilderConfig and the like come only from factory methods.
    """
    snapshot = {"version": module.__version__, "attributes": {"__version__": module.__version__},
                "functions": {}, "enums": {}, "classes": {}}
    for name in sorted(dir(module)):
        value = getattr(module, name)
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if isinstance(value, type):
            _describe_type(value, snapshot)
        elif callable(value):
            snapshot["functions"][name] = _signatures(value, name)
        else:
            snapshot["attributes"][name] = _text(value)
    snapshot["nptype"] = _nptype_table(module)
    return snapshot


def _is_enum(cls: type) -> bool:
    return hasattr(cls, "__members__")


def _describe_type(cls: type, snapshot: dict) -> None:
    qualname = cls.__qualname__
    if qualname in snapshot["enums"] or qualname in snapshot["classes"]:
        return
    if _is_enum(cls):
        snapshot["enums"][qualname] = {name: _enum_int(value) for name, value in cls.__members__.items()}
        return
    described = {"bases": [base.__qualname__ for base in cls.__bases__ if base.__module__ == cls.__module__],
                 "methods": {}, "properties": {}, "attributes": {}}
    snapshot["classes"][qualname] = described
    for name, raw in sorted(vars(cls).items()):
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(raw, property):
            described["properties"][name] = {"readable": raw.fget is not None, "writable": raw.fset is not None,
                                             "type": _property_type(raw)}
        elif isinstance(raw, type):
            _describe_type(raw, snapshot)
            described["attributes"][name] = f"{'enum' if _is_enum(raw) else 'class'} {raw.__qualname__}"
        elif callable(raw) or isinstance(raw, (staticmethod, classmethod)):
            signatures = _signatures(getattr(cls, name), name)
            if name != "__init__" or signatures != [NO_SIGNATURE]:   # else the "No constructor defined!" slot
                described["methods"][name] = signatures
        else:
            described["attributes"][name] = _text(raw)


def _signatures(function, name: str) -> list[str]:
    """pybind11 writes signatures as the first docstring line, or numbered lines after "Overloaded function."."""
    if inspect.isfunction(function):   # the package's own Python, e.g. nptype
        return [f"{name}{inspect.signature(function)}"]
    lines = (function.__doc__ or "").splitlines()
    if len(lines) > 1 and lines[1].strip() == "Overloaded function.":
        found = [match.group(1) for line in lines if (match := re.match(rf"\d+\. ({re.escape(name)}\(.*)$", line))]
    else:
        found = [lines[0]] if lines and lines[0].startswith(f"{name}(") else []
    return [_unqualified(signature) for signature in found] or [NO_SIGNATURE]


def _property_type(prop: property) -> str | None:
    """The getter's return annotation: pybind11 documents a getter as "(self: X) -> T"."""
    first = ((prop.fget.__doc__ if prop.fget else None) or "").splitlines()[:1]
    match = re.search(r"\) -> (.+)$", first[0]) if first else None
    return _unqualified(match.group(1)) if match else None


def _unqualified(text: str) -> str:
    return text.replace("tensorrt_bindings.tensorrt.", "").replace("tensorrt.tensorrt.", "")


def _enum_int(value) -> int:
    try:
        return int(value)
    except TypeError:
        return int(value.value)


def _text(value) -> str:
    if _is_enum(type(value)) and hasattr(value, "name"):
        return f"{type(value).__qualname__}.{value.name}"
    return _unqualified(repr(value))[:200]


def _nptype_table(module) -> dict:
    """What the pure-Python nptype() answers for each DataType (it raises TypeError for types numpy lacks)."""
    table = {}
    for name, value in module.DataType.__members__.items():
        try:
            table[name] = module.nptype(value).__name__
        except Exception as error:
            table[name] = f"{type(error).__name__}: {error}"
    return table
