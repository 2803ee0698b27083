"""A recording stand-in for the `tensorrt` module, generated from the real bindings of one version.

`fake_tensorrt(api_snapshot("10.3"), world)` returns a module whose classes, enums, methods, properties and
module attributes are exactly those of the real TensorRT 10.3 Python bindings (tensorrt_harness.api_snapshot):

- a member the real version lacks raises AttributeError (BuilderFlag.FP16 on 11.4, ILayer.precision on 11.4);
- every call is bound against the real pybind11 signatures (argument count, keyword names, types), so a call the
  real bindings would refuse raises TypeError; a read-only property (ITensor.dtype on 11.x) refuses assignment;
- `nptype` answers what the real one answers (it raises TypeError for BF16/FP8/INT4/FP4/E8M0);
- a method whose real signature returns `bool` returns a `Verdict`, which remembers whether the caller looked at
  it: `recorder.unchecked()` lists the calls whose result was ignored;
- every call, construction, property read/assignment and enum/attribute read is recorded, in the notation the
  product code declares its TensorRT surface in (runtimes.tensorrt.build.BUILD_API): "X.m()", "X.p", "X.p=", "X()".

What TensorRT *does* comes from a `TensorRTWorld`: it parses ONNX into layers the way onnx-tensorrt 10.3 does
(one counter for every `<node>_<N>` name, "[ONNX Layer: <node>]" metadata), checks builds like TensorRT does
(profiles cover every input, no precision flags or layer precisions on strongly typed networks, a timing cache
from another GPU is refused), "serializes" an engine as JSON of the build's decisions, and runs it: inputs are
read from `FakeDeviceMemory` at the addresses the runtime set, the ONNX the engine was built from runs in ONNX
Runtime, and outputs are written back — so padding, chunking and slicing are checked on real numbers.
"""
from __future__ import annotations

import itertools
import json
import re
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------------------- signatures

_SIGNATURE = re.compile(r"^(?P<name>\w+)\((?P<params>.*)\)(?: -> (?P<returns>.+))?$")


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    has_default: bool
    default: str | None = None


@dataclass(frozen=True)
class Signature:
    text: str
    params: tuple[Param, ...]     # without self
    returns: str
    variadic: bool = False


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char in "([{<":
            depth += 1
        elif char in ")]}>":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def parse_signature(text: str) -> Signature:
    match = _SIGNATURE.match(text.strip())
    if match is None:
        return Signature(text, (), "object", variadic=True)
    params, variadic = [], False
    for raw in _split_top_level(match.group("params")):
        if raw.startswith("*"):
            variadic = True
            continue
        name, _, rest = raw.partition(": ")
        annotation, has_default, default = rest, False, None
        if " = " in rest:
            annotation, _, default = rest.partition(" = ")
            has_default = True
        params.append(Param(name.strip(), annotation.strip(), has_default, default))
    if params and params[0].name == "self":
        params = params[1:]
    return Signature(text, tuple(params), (match.group("returns") or "None").strip(), variadic)


def _clean_type(text: str) -> str:
    text = text.strip()
    for prefix in ("typing_extensions.", "typing.", "collections.abc.", "tensorrt_bindings.tensorrt.",
                   "tensorrt.tensorrt.", "tensorrt."):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text.split("::")[-1]


# --------------------------------------------------------------------------------------------- recorder

class Verdict:
    """What a bool-returning TensorRT call answered; `consulted` once the caller has tested it."""

    def __init__(self, value: bool, call: str):
        self.value, self.call, self.consulted = bool(value), call, False

    def __bool__(self) -> bool:
        self.consulted = True
        return self.value

    def __repr__(self) -> str:
        return f"Verdict({self.value} from {self.call})"


@dataclass
class Recorder:
    calls: list[tuple[str, tuple, dict]] = field(default_factory=list)   # ("X.m()", args, kwargs) in order
    touched: set[tuple[str, str]] = field(default_factory=set)           # (kind, "X.m") kind: read/call/set/construct
    verdicts: list[Verdict] = field(default_factory=list)
    unknown_types: set[str] = field(default_factory=set)

    def touch(self, kind: str, name: str) -> None:
        self.touched.add((kind, name))

    def call(self, name: str, args: tuple, kwargs: dict) -> None:
        self.calls.append((name, args, kwargs))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def unchecked(self) -> list[str]:
        return [verdict.call for verdict in self.verdicts if not verdict.consulted]

    def uncovered(self, declared) -> list[str]:
        """Touched members the declaration does not name (notation of runtimes.tensorrt.build.BUILD_API)."""
        exact, owners = set(), set()
        for name in declared:
            base = name.rstrip("()=")
            if name.endswith("()"):
                # "X()" constructs a class or calls a module function (nptype()); "X.m()" calls a method.
                exact.update({("call", base)} if "." in base else {("construct", base), ("call", base)})
            else:
                exact.add(("set" if name.endswith("=") else "read", base))
            owners.add(base)
            owners.update(".".join(base.split(".")[:i]) for i in range(1, base.count(".") + 1))
        found = []
        for kind, name in sorted(self.touched):
            covered = (kind, name) in exact or (kind == "read" and (name in owners or ("call", name) in exact))
            if not covered:
                found.append(f"{name}{'()' if kind in ('call', 'construct') else '=' if kind == 'set' else ''}")
        return found


# ------------------------------------------------------------------------------------------------ enums

class FakeEnumMember:
    def __init__(self, enum: str, name: str, value: int):
        self.enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other) -> bool:
        return isinstance(other, FakeEnumMember) and (other.enum, other.value) == (self.enum, self.value)

    def __hash__(self) -> int:
        return hash((self.enum, self.value))

    def __repr__(self) -> str:
        return f"<{self.enum}.{self.name}: {self.value}>"


# -------------------------------------------------------------------------------------- classes, module

class FakeMeta(type):
    """Records reads of class-level members (enum members, Logger.WARNING) in the recorder of the fake module."""

    def __getattribute__(cls, name):
        value = super().__getattribute__(name)
        if not name.startswith("_"):
            for klass in type.__getattribute__(cls, "__mro__"):
                own = type.__getattribute__(klass, "__dict__")
                if name in own:
                    fake_name = own.get("_fake_name")
                    if fake_name is not None and name in own.get("_fake_members", ()):
                        own["_fake_module"].recorder.touch("read", f"{fake_name}.{name}")
                    break
        return value


class FakeObject(metaclass=FakeMeta):
    """Base of every generated class. Instances made by the world carry `_fake_state`."""
    _fake_name = None

    def __setattr__(self, name, value):
        if name.startswith("_fake") or not type(self).__dict__.get("_fake_generated", False) or \
                isinstance(_static(type(self), name), property):
            object.__setattr__(self, name, value)
            return
        # pybind11 objects without dynamic attributes refuse new ones, as the real ones do.
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")


def _static(cls, name):
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


class FakeModule(types.ModuleType):
    def __getattribute__(self, name):
        value = super().__getattribute__(name)
        if not name.startswith("_") and name not in ("recorder", "world", "snapshot"):
            super().__getattribute__("recorder").touch("read", name)
        return value


class _Builder:
    """Turns a snapshot into a FakeModule."""

    def __init__(self, snapshot: dict, world: "TensorRTWorld", recorder: Recorder):
        self.snapshot, self.world, self.recorder = snapshot, world, recorder
        self.module = FakeModule("tensorrt")
        self.module.recorder, self.module.world, self.module.snapshot = recorder, world, snapshot
        self.enums: dict[str, type] = {}
        self.classes: dict[str, type] = {}

    # -- types accepted by the real signatures ------------------------------------------------------------

    def accepts(self, annotation: str, value, default: str | None = None) -> bool:
        name = _clean_type(annotation)
        if value is None and default == "None":
            return True
        if name.startswith("Optional["):
            return value is None or self.accepts(name[9:-1], value)
        if name in ("object", "Any", "capsule"):
            return True
        if name in ("int", "SupportsInt"):
            return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, Verdict))
        if name in ("float", "SupportsFloat"):
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if name == "bool":
            return isinstance(value, (bool, np.bool_))
        if name == "str":
            return isinstance(value, str)
        if name in ("Dims", "Dims32", "Dims64", "DimsHW"):
            return isinstance(value, self.classes.get(name, ())) or (
                isinstance(value, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in value))
        if name in ("tuple", "list"):
            return isinstance(value, tuple if name == "tuple" else list)
        if name in ("buffer", "Buffer", "bytes"):
            return isinstance(value, (bytes, bytearray, memoryview, np.ndarray))
        inner = re.match(r"^(?:List|list|Sequence|Iterable)\[(.*)\]$", name)
        if inner:
            return isinstance(value, (list, tuple)) and all(self.accepts(inner.group(1), v) for v in value)
        if name in self.enums:
            return isinstance(value, FakeEnumMember) and value.enum == name
        if name in self.classes:
            return isinstance(value, self.classes[name]) and getattr(value, "_fake_initialised", False)
        if name.startswith("numpy"):
            return True
        self.recorder.unknown_types.add(name)
        return True

    def bind(self, owner: str, signatures: list[Signature], args: tuple, kwargs: dict) -> Signature:
        for signature in signatures:
            if signature.variadic:
                return signature
            names = [p.name for p in signature.params]
            if len(args) > len(names) or any(k not in names for k in kwargs):
                continue
            values = dict(zip(names, args))
            if any(k in values for k in kwargs):
                continue
            values.update(kwargs)
            if any(p.name not in values and not p.has_default for p in signature.params):
                continue
            if all(self.accepts(p.type, values[p.name], p.default) for p in signature.params if p.name in values):
                return signature
        given = ", ".join([type(a).__name__ for a in args] + [f"{k}={type(v).__name__}" for k, v in kwargs.items()])
        raise TypeError(f"{owner}(): incompatible function arguments ({given}). The real bindings accept:\n  " +
                        "\n  ".join(s.text for s in signatures))

    # -- values returned when the world has nothing to say -------------------------------------------------

    def default_value(self, annotation: str):
        name = _clean_type(annotation)
        if name in ("None", ""):
            return None
        if name in ("int", "SupportsInt"):
            return 0
        if name == "float":
            return 0.0
        if name == "str":
            return ""
        if name in self.enums:
            return next(iter(self.enums[name]._fake_members_by_value.values()))
        if name in self.classes:
            return self.world.make(name)
        if re.match(r"^(?:List|list)\[", name):
            return []
        return None

    # -- building the module ---------------------------------------------------------------------------------

    def build(self):
        for qualname, members in self.snapshot["enums"].items():
            self.enums[qualname] = self._enum(qualname, members)
        for qualname in self._class_order():
            self.classes[qualname] = self._class(qualname, self.snapshot["classes"][qualname])
        for qualname, enum in self.enums.items():   # nested enums, e.g. ILogger.Severity
            owner, _, short = qualname.rpartition(".")
            if owner:
                type.__setattr__(self.classes[owner], short, enum)
            else:
                setattr(self.module, qualname, enum)
        for qualname, cls in self.classes.items():
            if "." not in qualname:
                setattr(self.module, qualname, cls)
        for name, text in self.snapshot["attributes"].items():
            setattr(self.module, name, self._attribute_value(text))
        for name, signatures in self.snapshot["functions"].items():
            setattr(self.module, name, self._function(name, signatures))
        return self.module

    def _class_order(self) -> list[str]:
        classes, ordered, seen = self.snapshot["classes"], [], set()

        def visit(name):
            if name in seen or name not in classes:
                return
            seen.add(name)
            for base in classes[name]["bases"]:
                visit(base)
            ordered.append(name)

        for name in classes:
            visit(name)
        return ordered

    def _enum(self, qualname: str, members: dict):
        by_value = {}
        body = {"_fake_name": qualname, "_fake_members": frozenset(members), "_fake_module": self.module,
                "__members__": {}}
        for name, value in members.items():
            member = FakeEnumMember(qualname, name, value)
            body[name] = member
            body["__members__"][name] = member
            by_value.setdefault(value, member)
        body["_fake_members_by_value"] = by_value
        return FakeMeta(qualname.rpartition(".")[2], (), body)

    def _attribute_value(self, text: str):
        enum, _, member = text.rpartition(".")
        if enum in self.enums and member in self.enums[enum].__dict__:
            return self.enums[enum].__dict__[member]
        if text.startswith(("enum ", "class ")):
            return None
        return text.strip("'")

    def _class(self, qualname: str, described: dict):
        bases = tuple(self.classes[b] for b in described["bases"] if b in self.classes) or (FakeObject,)
        members = set(described["methods"]) | set(described["properties"]) | set(described["attributes"])
        body = {"_fake_name": qualname, "_fake_members": frozenset(members), "_fake_module": self.module,
                "_fake_generated": True, "__qualname__": qualname}
        for name, signatures in described["methods"].items():
            parsed = [parse_signature(s) for s in signatures]
            body[name] = self._init(qualname, parsed) if name == "__init__" else self._method(qualname, name, parsed)
        if "__init__" not in described["methods"]:
            body["__init__"] = self._no_constructor(qualname)
        for name, prop in described["properties"].items():
            body[name] = self._property(qualname, name, prop)
        for name, text in described["attributes"].items():
            if not text.startswith(("enum ", "class ")):
                body[name] = self._attribute_value(text)
        if qualname == "IHostMemory":
            body["__bytes__"] = lambda obj: bytes(obj._fake_state["data"])   # the real one has the buffer protocol
        return FakeMeta(qualname.rpartition(".")[2], bases, body)

    def _init(self, owner: str, signatures: list[Signature]):
        builder = self

        def __init__(obj, *args, **kwargs):
            builder.bind(f"{owner}.__init__", signatures, args, kwargs)
            builder.recorder.touch("construct", owner)
            builder.recorder.call(f"{owner}()", args, kwargs)
            object.__setattr__(obj, "_fake_state", getattr(obj, "_fake_state", {}))
            object.__setattr__(obj, "_fake_initialised", True)
            hook = builder.world.hook(f"{owner}.__init__")
            if hook is not None:
                hook(obj, *args, **kwargs)
        return __init__

    def _no_constructor(self, owner: str):
        def __init__(obj, *args, **kwargs):
            raise TypeError(f"tensorrt.{owner}: No constructor defined!")
        return __init__

    def _method(self, owner: str, name: str, signatures: list[Signature]):
        builder = self

        def method(obj, *args, **kwargs):
            signature = builder.bind(f"{owner}.{name}", signatures, args, kwargs)
            builder.recorder.touch("call", f"{owner}.{name}")
            builder.recorder.call(f"{owner}.{name}()", args, kwargs)
            hook = builder.world.hook(f"{owner}.{name}")
            result = hook(obj, *args, **kwargs) if hook is not None else builder.default_value(signature.returns)
            if _clean_type(signature.returns) == "bool":
                verdict = Verdict(bool(result), f"{owner}.{name}()")
                builder.recorder.verdicts.append(verdict)
                return verdict
            return result
        method.__name__ = name
        return method

    def _property(self, owner: str, name: str, described: dict):
        builder = self

        def getter(obj):
            builder.recorder.touch("read", f"{owner}.{name}")
            hook = builder.world.hook(f"{owner}.{name}")
            if hook is not None:
                return hook(obj)
            state = obj._fake_state
            return state[name] if name in state else builder.default_value(described.get("type") or "None")

        def setter(obj, value):
            if described.get("type") and not builder.accepts(described["type"], value):
                raise TypeError(f"{owner}.{name} takes {described['type']}, not {type(value).__name__}")
            builder.recorder.touch("set", f"{owner}.{name}")
            builder.recorder.call(f"{owner}.{name}=", (value,), {})
            hook = builder.world.hook(f"{owner}.{name}=")
            if hook is not None:
                hook(obj, value)
            else:
                obj._fake_state[name] = value

        return property(getter, setter if described.get("writable") else None)

    def _function(self, name: str, signatures: list[str]):
        builder = self
        parsed = [parse_signature(s) for s in signatures]
        if name == "nptype":
            table = self.snapshot["nptype"]

            def nptype(trt_type):
                builder.recorder.touch("call", "nptype")
                builder.recorder.call("nptype()", (trt_type,), {})
                answer = table[trt_type.name]
                if answer.startswith("TypeError"):
                    raise TypeError(answer.partition(": ")[2])
                return getattr(np, answer) if answer != "bool" else np.bool_
            return nptype

        def function(*args, **kwargs):
            signature = builder.bind(name, parsed, args, kwargs)
            builder.recorder.touch("call", name)
            builder.recorder.call(f"{name}()", args, kwargs)
            hook = builder.world.hook(name)
            return hook(*args, **kwargs) if hook is not None else builder.default_value(signature.returns)
        return function


def fake_tensorrt(snapshot: dict, world: "TensorRTWorld | None" = None):
    """The fake `tensorrt` module of the version `snapshot` describes (see the module docstring)."""
    world = world or TensorRTWorld()
    recorder = Recorder()
    builder = _Builder(snapshot, world, recorder)
    module = builder.build()
    world.attach(module, builder)
    return module


# ------------------------------------------------------------------------------------------------ world

_ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 16: "BF16", 6: "INT32", 7: "INT64", 3: "INT8", 2: "UINT8", 9: "BOOL"}
_TRT_TO_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8,
                 "UINT8": np.uint8, "BOOL": np.bool_}
# ONNX op → the layer type onnx-tensorrt makes for it (the few the probes and GroupViT use; the rest ELEMENTWISE).
_LAYER_TYPES = {"MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY", "Conv": "CONVOLUTION",
                "LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX", "Erf": "UNARY", "Sqrt": "UNARY",
                "ReduceMax": "REDUCE", "ReduceSum": "REDUCE", "ReduceMean": "REDUCE", "ReduceL2": "REDUCE",
                "Reshape": "SHUFFLE", "Transpose": "SHUFFLE", "Flatten": "SHUFFLE", "Unsqueeze": "SHUFFLE",
                "Squeeze": "SHUFFLE", "Concat": "CONCATENATION", "Gather": "GATHER", "Shape": "SHAPE",
                "Slice": "SLICE", "Cast": "CAST", "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE",
                "Where": "SELECT", "Relu": "ACTIVATION", "Sigmoid": "ACTIVATION", "Identity": "IDENTITY"}
# Ops the parser imports as two layers registered with the node (MatMul: the product and a broadcast/reshape
# helper; Gemm: the product and the bias add), so the second one gets the `<node>_<N>` name.
_TWO_LAYER_OPS = {"MatMul": "SHUFFLE", "Gemm": "ELEMENTWISE"}
PRECISION_FLAGS = ("FP16", "INT8", "BF16", "FP8", "INT4", "FP4")
# Members that only count or index a list the world keeps in the object's state.
_COUNTS = {"INetworkDefinition.num_layers": "layers", "ILayer.num_inputs": "inputs", "ILayer.num_outputs": "outputs",
           "OnnxParser.num_errors": "errors"}
_ITEMS = {"INetworkDefinition.get_layer": "layers", "ILayer.get_input": "inputs", "ILayer.get_output": "outputs"}


def _hooks(*keys):
    """Marks a TensorRTWorld method as what the fake does for these members ("X.m", "X.p", "X.p=", "X.__init__")."""
    def mark(function):
        function._hooks = keys
        return function
    return mark


class TensorRTWorld:
    """What the fake TensorRT does (see the module docstring). Options make it misbehave the ways TensorRT can."""

    def __init__(self, *, gpu: str = "Fake GPU", io_dtypes: dict | None = None, fail_build: bool = False,
                 reject_calibration_profile: bool = False, keep_models: bool = False):
        self.gpu, self.io_dtypes, self.fail_build = gpu, dict(io_dtypes or {}), fail_build
        # Engines run the ONNX they were parsed from; keep_models holds its bytes, for engines that outlive the
        # file (an export's staging directory is renamed into the artifact).
        self.keep_models, self.models = keep_models, {}
        self.reject_calibration_profile = reject_calibration_profile
        self.memory: dict[int, np.ndarray] = {}
        self._addresses = itertools.count(0x10000, 0x10000)
        self._sessions: dict[str, object] = {}
        self.builds: list[dict] = []        # every engine description built
        self.violations: list[str] = []     # what real TensorRT would report as an error
        self.loggers = 0
        self.freed: list[int] = []
        self.streams_closed = 0

    def attach(self, module, builder: _Builder) -> None:
        self.trt, self._builder = module, builder
        self._hooks = {}
        for attribute in dir(type(self)):
            function = getattr(type(self), attribute)
            for key in getattr(function, "_hooks", ()):
                self._hooks[key] = getattr(self, attribute)
        for key, state in _COUNTS.items():
            self._hooks[key] = lambda obj, state=state: len(obj._fake_state[state])
        for key, state in _ITEMS.items():
            self._hooks[key] = lambda obj, index, state=state: obj._fake_state[state][index]

    def hook(self, key: str):
        return self._hooks.get(key)

    def make(self, class_name: str, **state):
        cls = self._builder.classes[class_name]
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_fake_state", dict(state))
        object.__setattr__(obj, "_fake_initialised", True)
        return obj

    def member(self, enum: str, name: str) -> FakeEnumMember:
        return type.__getattribute__(self._builder.enums[enum], "__dict__")[name]

    # -- device memory -------------------------------------------------------------------------------------

    def allocate(self, nbytes: int) -> int:
        address = next(self._addresses)
        self.memory[address] = np.zeros(max(int(nbytes), 1), np.uint8)
        return address

    def free(self, address: int) -> None:
        self.memory.pop(address)
        self.freed.append(address)

    # -- logger, builder, network ----------------------------------------------------------------------------

    @_hooks("Logger.__init__")
    def logger_init(self, logger, *args, **kwargs):
        self.loggers += 1

    @_hooks("Builder.create_network")
    def create_network(self, builder, flags=0):
        strong = self.trt.snapshot["enums"]["NetworkDefinitionCreationFlag"]["STRONGLY_TYPED"]
        return self.make("INetworkDefinition", flags=flags, strongly_typed=bool(flags & (1 << strong)), layers=[],
                         inputs={}, names=set(), counter=itertools.count())

    @_hooks("OnnxParser.__init__")
    def parser_init(self, parser, network, logger):
        parser._fake_state.update(network=network, errors=[])

    @_hooks("OnnxParser.parse_from_file")
    def parse_from_file(self, parser, path):
        import onnx
        network = parser._fake_state["network"]
        model = onnx.load(path)
        network._fake_state.update(onnx=str(Path(path).resolve()), model_io=self._model_io(model))
        if self.keep_models:
            self.models[network._fake_state["onnx"]] = Path(path).read_bytes()
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
        dtypes = {v.name: v.type.tensor_type.elem_type for v in
                  list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
        dtypes.update({init.name: init.data_type for init in model.graph.initializer})
        network._fake_state["inputs"] = {v.name: v for v in model.graph.input}
        for node in model.graph.node:
            if node.op_type == "Constant":      # "No layer will be added for Constant nodes in ONNX."
                continue
            layer_types = [_LAYER_TYPES.get(node.op_type, "ELEMENTWISE")]
            if node.op_type in _TWO_LAYER_OPS:
                layer_types.append(_TWO_LAYER_OPS[node.op_type])
            for layer_type in layer_types:
                self._add_layer(network, node.name, layer_type, [dtypes.get(i) for i in node.input if i],
                                [dtypes.get(o) for o in node.output if o], metadata=f"[ONNX Layer: {node.name}]")
        return True

    def _add_layer(self, network, basename, layer_type, input_types, output_types, metadata=""):
        state = network._fake_state
        name = basename
        while name in state["names"]:      # ImporterContext::generateUniqueName: one counter for all names
            name = f"{basename}_{next(state['counter'])}"
        state["names"].add(name)

        def tensors(onnx_types):
            return [self.make("ITensor", dtype=self.member("DataType", _ONNX_TO_TRT.get(t, "FLOAT")))
                    for t in onnx_types]

        layer = self.make("ILayer", name=name, type=self.member("LayerType", layer_type), metadata=metadata,
                          inputs=tensors(input_types), outputs=tensors(output_types), network=network,
                          output_types={})
        state["layers"].append(layer)

    def _model_io(self, model) -> list[dict]:
        io = []
        for mode, values in (("INPUT", model.graph.input), ("OUTPUT", model.graph.output)):
            for value in values:
                tensor_type = value.type.tensor_type
                io.append({"name": value.name, "mode": mode,
                           "dtype": self.io_dtypes.get(value.name, _ONNX_TO_TRT[tensor_type.elem_type]),
                           "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]})
        return io

    # -- layers, tensors ---------------------------------------------------------------------------------
    def _weakly_typed_only(self, layer, what: str) -> None:
        if layer._fake_state["network"]._fake_state["strongly_typed"]:
            self.violations.append(f"{what} of {layer._fake_state['name']} set in a strongly typed network")

    @_hooks("ILayer.precision=")
    def layer_set_precision(self, layer, value):
        self._weakly_typed_only(layer, "precision")
        layer._fake_state["precision"] = value

    @_hooks("ILayer.set_output_type")
    def layer_set_output_type(self, layer, index, dtype):
        self._weakly_typed_only(layer, "output type")
        if index >= len(layer._fake_state["outputs"]):
            self.violations.append(f"output {index} of {layer._fake_state['name']} does not exist")
        layer._fake_state["output_types"][index] = dtype

    # -- builder config ----------------------------------------------------------------------------------

    @_hooks("Builder.create_builder_config")
    def create_builder_config(self, builder):
        return self.make("IBuilderConfig", flags=[], profiles=[], timing_cache=None, calibration_profile=None)

    @_hooks("IBuilderConfig.set_flag")
    def config_set_flag(self, config, flag):
        config._fake_state["flags"].append(flag.name)

    @_hooks("Builder.create_optimization_profile")
    def create_optimization_profile(self, builder):
        return self.make("IOptimizationProfile", shapes={})

    @_hooks("IOptimizationProfile.set_shape")
    def profile_set_shape(self, profile, name, minimum, optimum, maximum):
        shapes = [tuple(int(d) for d in s) for s in (minimum, optimum, maximum)]
        if not all(len(s) == len(shapes[0]) for s in shapes) or \
                not all(a <= b <= c for a, b, c in zip(*shapes)):
            self.violations.append(f"profile shapes {shapes} of {name} are not min ≤ opt ≤ max")
        profile._fake_state["shapes"][name] = shapes

    @_hooks("IBuilderConfig.add_optimization_profile")
    def config_add_profile(self, config, profile):
        config._fake_state["profiles"].append(profile)
        return len(config._fake_state["profiles"]) - 1

    @_hooks("IBuilderConfig.set_calibration_profile")
    def config_set_calibration_profile(self, config, profile):
        config._fake_state["calibration_profile"] = profile
        return not self.reject_calibration_profile

    @_hooks("IBuilderConfig.create_timing_cache")
    def create_timing_cache(self, config, data):
        data = bytes(data)
        if not data:
            return self.make("ITimingCache", gpu=self.gpu, entries=0)
        try:
            stored = json.loads(data)
        except ValueError:
            return None
        return self.make("ITimingCache", gpu=stored["gpu"], entries=stored["entries"])

    @_hooks("IBuilderConfig.set_timing_cache")
    def set_timing_cache(self, config, cache, ignore_mismatch):
        if cache._fake_state["gpu"] != self.gpu and not ignore_mismatch:
            return False
        config._fake_state["timing_cache"] = cache
        return True

    @_hooks("IBuilderConfig.get_timing_cache")
    def get_timing_cache(self, config):
        return config._fake_state["timing_cache"]

    @_hooks("ITimingCache.serialize")
    def timing_cache_serialize(self, cache):
        data = json.dumps({"gpu": cache._fake_state["gpu"], "entries": cache._fake_state["entries"]}).encode()
        return self.make("IHostMemory", data=data)

    # -- build ----------------------------------------------------------------------------------------------

    @_hooks("Builder.build_serialized_network")
    def build_serialized_network(self, builder, network, config, *rest):
        net, cfg = network._fake_state, config._fake_state
        problems = list(self.violations)
        if net["strongly_typed"]:
            problems += [f"builder flag {flag} on a strongly typed network" for flag in cfg["flags"]
                         if flag in PRECISION_FLAGS]
        if len(cfg["profiles"]) != 1:
            problems.append(f"{len(cfg['profiles'])} optimization profiles; one is expected")
        profile = cfg["profiles"][0]._fake_state["shapes"] if cfg["profiles"] else {}
        for spec in net["model_io"]:
            if spec["mode"] == "INPUT":
                shapes = profile.get(spec["name"])
                if shapes is None or any(len(s) != len(spec["shape"]) or any(
                        d != -1 and d != v for d, v in zip(spec["shape"], s)) for s in shapes):
                    problems.append(f"profile {shapes} does not fit input {spec['name']} {spec['shape']}")
        calibration = self._calibrate(net, cfg) if cfg.get("int8_calibrator") is not None else None
        if problems or self.fail_build:
            self.violations.extend(problems)
            return None
        if cfg["timing_cache"] is not None:
            cfg["timing_cache"]._fake_state["entries"] += 1
        layers = [{"name": l._fake_state["name"], "type": l._fake_state["type"].name,
                   "node": l._fake_state["metadata"], "precision": getattr(l._fake_state.get("precision"), "name", None),
                   "output_types": {str(i): t.name for i, t in l._fake_state["output_types"].items()},
                   "output_dtypes": [t._fake_state["dtype"].name for t in l._fake_state["outputs"]]}
                  for l in net["layers"]]
        description = {"fake_tensorrt_engine": self.trt.__version__, "onnx": net["onnx"],
                       "strongly_typed": net["strongly_typed"], "flags": cfg["flags"],
                       "profile": {name: [list(s) for s in shapes] for name, shapes in profile.items()},
                       "io": net["model_io"], "layers": layers, "calibration": calibration,
                       "verbosity": getattr(cfg.get("profiling_verbosity"), "name", None)}
        self.builds.append(description)
        return self.make("IHostMemory", data=json.dumps(description).encode())

    def _calibrate(self, net, cfg) -> dict:
        """IInt8Calibrator's protocol as TensorRT drives it: the cache first, else batches until None."""
        calibrator = cfg["int8_calibrator"]
        cached = calibrator.read_calibration_cache()
        if cached:
            return {"from_cache": True, "batches": 0}
        batch = calibrator.get_batch_size()
        names = [spec["name"] for spec in net["model_io"] if spec["mode"] == "INPUT"]
        batches = 0
        while True:
            pointers = calibrator.get_batch(names)
            if pointers is None:
                break
            if not (isinstance(pointers, list) and len(pointers) == len(names) and
                    all(isinstance(p, int) and p in self.memory for p in pointers)):
                self.violations.append(f"get_batch returned {pointers!r}, not one device address per input")
                break
            batches += 1
        calibrator.write_calibration_cache(json.dumps({"batch": batch, "batches": batches}).encode())
        return {"from_cache": False, "batch": batch, "batches": batches}

    # -- runtime -------------------------------------------------------------------------------------------

    @_hooks("Runtime.deserialize_cuda_engine")
    def deserialize(self, runtime, data):
        try:
            description = json.loads(bytes(data))
        except ValueError:
            return None
        if description.get("fake_tensorrt_engine") != self.trt.__version__:
            return None
        return self.make("ICudaEngine", description=description)

    @staticmethod
    def _io(engine) -> list[dict]:
        return engine._fake_state["description"]["io"]

    @_hooks("ICudaEngine.num_io_tensors")
    def engine_num_io(self, engine):
        return len(self._io(engine))

    @_hooks("ICudaEngine.get_tensor_name")
    def engine_tensor_name(self, engine, index):
        return self._io(engine)[index]["name"]

    def _spec(self, engine, name) -> dict:
        return next(spec for spec in self._io(engine) if spec["name"] == name)

    @_hooks("ICudaEngine.get_tensor_mode")
    def engine_tensor_mode(self, engine, name):
        return self.member("TensorIOMode", self._spec(engine, name)["mode"])

    @_hooks("ICudaEngine.get_tensor_dtype")
    def engine_tensor_dtype(self, engine, name):
        return self.member("DataType", self._spec(engine, name)["dtype"])

    @_hooks("ICudaEngine.get_tensor_profile_shape")
    def engine_profile_shape(self, engine, name, index):
        return [tuple(s) for s in engine._fake_state["description"]["profile"][name]]

    @_hooks("ICudaEngine.num_layers")
    def engine_num_layers(self, engine):
        return len(engine._fake_state["description"]["layers"])

    @_hooks("ICudaEngine.create_execution_context")
    def create_context(self, engine, *args):
        return self.make("IExecutionContext", engine=engine, shapes={}, addresses={})

    @_hooks("IExecutionContext.set_input_shape")
    def context_set_input_shape(self, context, name, shape):
        engine = context._fake_state["engine"]
        low, _, high = engine._fake_state["description"]["profile"][name]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(low) or not all(a <= d <= b for a, d, b in zip(low, shape, high)):
            return False
        context._fake_state["shapes"][name] = shape
        return True

    def _batch(self, context) -> int | None:
        shapes = context._fake_state["shapes"]
        return next(iter(shapes.values()))[0] if shapes else None

    @_hooks("IExecutionContext.get_tensor_shape")
    def context_tensor_shape(self, context, name):
        spec = self._spec(context._fake_state["engine"], name)
        if spec["mode"] == "INPUT":
            return context._fake_state["shapes"].get(name, tuple(spec["shape"]))
        batch = self._batch(context)
        return tuple((batch if batch is not None else -1) if d == -1 else d for d in spec["shape"])

    @_hooks("IExecutionContext.set_tensor_address")
    def context_set_address(self, context, name, address):
        if address not in self.memory:
            return False
        context._fake_state["addresses"][name] = address
        return True

    @_hooks("IExecutionContext.execute_async_v3")
    def execute(self, context, stream_handle):
        state = context._fake_state
        engine = state["engine"]._fake_state["description"]
        inputs = [spec for spec in engine["io"] if spec["mode"] == "INPUT"]
        if any(spec["name"] not in state["shapes"] for spec in inputs) or \
                any(spec["name"] not in state["addresses"] for spec in engine["io"]):
            return False      # TensorRT: "not all shapes are specified" / "address is not set"
        feeds = {}
        for spec in inputs:
            shape = state["shapes"][spec["name"]]
            dtype = np.dtype(_TRT_TO_NUMPY[spec["dtype"]])
            raw = self.memory[state["addresses"][spec["name"]]][:int(np.prod(shape)) * dtype.itemsize]
            feeds[spec["name"]] = raw.view(dtype).reshape(shape).copy()
        outputs = self._run(engine, feeds)
        for spec in engine["io"]:
            if spec["mode"] != "OUTPUT":
                continue
            data = np.ascontiguousarray(outputs[spec["name"]].astype(_TRT_TO_NUMPY.get(spec["dtype"], np.float32)))
            buffer = self.memory[state["addresses"][spec["name"]]]
            if data.nbytes > buffer.size:
                return False   # an output larger than its buffer: TensorRT would write past it
            buffer[:data.nbytes] = data.view(np.uint8).reshape(-1)
        return True

    def _run(self, engine: dict, feeds: dict) -> dict:
        import onnxruntime
        session = self._sessions.get(engine["onnx"])
        if session is None:
            source = self.models.get(engine["onnx"], engine["onnx"])
            session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
            self._sessions[engine["onnx"]] = session
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    # -- engine inspector ------------------------------------------------------------------------------------

    @_hooks("ICudaEngine.create_engine_inspector")
    def create_inspector(self, engine):
        return self.make("EngineInspector", engine=engine)

    @_hooks("EngineInspector.get_layer_information")
    def layer_information(self, inspector, index, layout):
        description = inspector._fake_state["engine"]._fake_state["description"]
        layer = description["layers"][index]
        if description["verbosity"] != "DETAILED":
            return json.dumps(layer["name"])
        if layer["precision"]:
            precision = layer["precision"]
        elif description["strongly_typed"]:     # every tensor's type is the graph's
            precision = "HALF" if "HALF" in layer["output_dtypes"] else "FLOAT"
        else:
            precision = "HALF" if "FP16" in description["flags"] else "FLOAT"
        text = {"FLOAT": "Row major linear FP32 format", "HALF": "Row major linear FP16 format"}[precision]
        if layer["type"] in ("MATRIX_MULTIPLY", "CONVOLUTION") and "int8" in description["onnx"]:
            text = "Thirty-two wide channel vectorized row major Int8 format."
        return json.dumps({"Name": layer["name"], "LayerType": layer["type"].title(),
                           "Inputs": [{"Format/Datatype": text}], "Outputs": [{"Format/Datatype": text}]})


class FakeDeviceMemory:
    """Stands in for runtimes.tensorrt.cuda's cuda-python/torch memory: buffers live in the world's address space."""
    kind = "fake"

    def __init__(self, world: TensorRTWorld):
        self.world = world

    def stream(self):
        return FakeStream(self.world)

    def buffer(self, nbytes: int):
        return FakeBuffer(self.world, nbytes)


class FakeStream:
    _handles = itertools.count(1)

    def __init__(self, world: TensorRTWorld):
        self.world, self.handle = world, next(self._handles)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        if self.handle is not None:
            self.world.streams_closed += 1
            self.handle = None


class FakeBuffer:
    def __init__(self, world: TensorRTWorld, nbytes: int):
        self.world, self.nbytes = world, max(int(nbytes), 1)
        self.ptr = world.allocate(self.nbytes)

    def upload(self, array: np.ndarray, stream) -> None:
        raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        if raw.size > self.nbytes:
            raise AssertionError(f"upload of {raw.size} bytes into a {self.nbytes}-byte buffer")
        self.world.memory[self.ptr][:raw.size] = raw

    def download(self, nbytes: int, stream) -> np.ndarray:
        return self.world.memory[self.ptr][:nbytes].copy()

    def free(self) -> None:
        if self.ptr:
            self.world.free(self.ptr)
            self.ptr = 0


# ------------------------------------------------------------------------------------------ test helpers

def install(monkeypatch, trt, world: TensorRTWorld, device=None) -> None:
    """Make groupvit_edge see `trt` as the installed TensorRT, with the world's GPU (or `device`, a CudaDevice)
    and device memory."""
    from groupvit_edge.runtimes import tensorrt as runtime
    from groupvit_edge.runtimes.tensorrt import cuda, install as installed
    device = device or runtime.CudaDevice(world.gpu, "8.7")
    runtime.tensorrt_logger.cache_clear()
    # Where the code looks them up (the defining modules), and the package's re-exports that scripts import.
    for module in (installed, runtime):
        monkeypatch.setattr(module, "import_tensorrt", lambda: trt)
    for module in (cuda, runtime):
        monkeypatch.setattr(module, "device_properties", lambda index=0: device)
        monkeypatch.setattr(module, "open_device_memory", lambda kind="auto", index=0: FakeDeviceMemory(world))


def _save(model, path: Path) -> Path:
    import onnx
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def probe_image_graph(path: Path, size: int = 8, opset: int = 17) -> Path:
    """A tiny image graph with GroupViT's I/O (pixels[batch,3,S,S] → group_embeds[batch,2,4], image_embed[batch,4],
    grouping[batch,2,2,2]) and the ops pinning cares about: LayerNormalization, Softmax, Erf, an assignment MatMul
    (its name matches the precision policy) and weight MatMuls, each output row depending on its input row only."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    features = 3 * size * size

    def weight(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    assign = "/vision_model/encoder/stages.0/downsample/assign"
    nodes = [
        helper.make_node("Reshape", ["pixels", "flat_shape"], ["flat"], name="/vision_model/embeddings/Reshape"),
        helper.make_node("MatMul", ["flat", "w_embed"], ["embedded"], name="/vision_model/embeddings/MatMul"),
        helper.make_node("Erf", ["embedded"], ["activated"], name="/vision_model/encoder/mlp/activation_fn/Erf"),
        helper.make_node("LayerNormalization", ["activated", "gamma", "beta"], ["normed"], axis=-1,
                         name="/vision_model/encoder/layer_norm/LayerNormalization"),
        helper.make_node("MatMul", ["normed", "w_assign"], ["logits"], name=f"{assign}/MatMul"),
        helper.make_node("Softmax", ["logits"], ["soft"], axis=-1, name=f"{assign}/Softmax"),
        helper.make_node("Reshape", ["soft", "grouping_shape"], ["grouping"], name=f"{assign}/Reshape"),
        helper.make_node("MatMul", ["normed", "w_group"], ["groups"], name="/vision_model/group_projector/MatMul"),
        helper.make_node("Reshape", ["groups", "group_shape"], ["group_embeds"],
                         name="/vision_model/group_projector/Reshape"),
        helper.make_node("MatMul", ["normed", "w_image"], ["image_embed"], name="/visual_projection/MatMul"),
    ]
    initializers = [
        numpy_helper.from_array(np.array([-1, features], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([-1, 2, 2, 2], np.int64), "grouping_shape"),
        numpy_helper.from_array(np.array([-1, 2, 4], np.int64), "group_shape"),
        weight("w_embed", (features, 8)), weight("w_assign", (8, 8)), weight("w_group", (8, 8)),
        weight("w_image", (8, 4)),
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"), numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
    ]
    graph = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("group_embeds", TensorProto.FLOAT, ["batch", 2, 4]),
         helper.make_tensor_value_info("image_embed", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("grouping", TensorProto.FLOAT, ["batch", 2, 2, 2])], initializers)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)


def name_collision_graph(path: Path) -> Path:
    """x[batch,4] → /blk/fc/MatMul → /blk/MatMul → /blk/MatMul_1 → y. torch names a scope's second MatMul
    `MatMul_1`; the parser names the helper layer of /blk/MatMul `/blk/MatMul_1` too (its counter is at 1 by
    then), and /blk/MatMul_1's own layer becomes `/blk/MatMul_1_2`: only the metadata tells them apart."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(1)
    names = ["/blk/fc/MatMul", "/blk/MatMul", "/blk/MatMul_1"]
    nodes, initializers, previous = [], [], "x"
    for index, name in enumerate(names):
        out = "y" if index == len(names) - 1 else f"h{index}"
        nodes.append(helper.make_node("MatMul", [previous, f"w{index}"], [out], name=name))
        initializers.append(numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), f"w{index}"))
        previous = out
    graph = helper.make_graph(nodes, "collision", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], initializers)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
