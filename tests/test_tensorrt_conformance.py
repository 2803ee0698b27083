"""The TensorRT code against the real TensorRT Python bindings of 10.3 (JetPack 6), the newest 10.x and the newest
11.x (tests/tensorrt_harness): what exists, with which signatures, and what the build and runtime flows do.

Three layers, per version:
1. the declared surface (runtimes.tensorrt.build.BUILD_API …, runtimes.tensorrt.runner.RUNTIME_API …) exists in
   the real bindings with the kind the code uses it as (method, writable property, enum member, constructor);
2. product code runs in a subprocess where `import tensorrt` is the real bindings (stub libraries): plans,
   network flags, `missing_api`, dtype mapping through the real `nptype`, the shared logger, and the entropy
   calibrator subclassing the real IInt8EntropyCalibrator2;
3. the builder and runtime flows run against recording fakes generated from each version's bindings
   (tensorrt_harness.fake): every call binds against the real signatures, every returned bool must be looked at,
   the code touches nothing it has not declared, profiles are honoured and pins follow layer metadata.
A version whose wheel cannot be fetched skips with the reason (GROUPVIT_EDGE_REQUIRE_TENSORRT_BINDINGS=1 fails).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tensorrt_harness as harness
from tensorrt_harness.fake import (FakeDeviceMemory, TensorRTWorld, fake_tensorrt, install, name_collision_graph,
                                   probe_image_graph)

from groupvit_edge.errors import UserError, ValidationFailed
from groupvit_edge.exporters import tensorrt as engines
from groupvit_edge.exporters.onnx import onnx_record
from groupvit_edge.runtimes import tensorrt as trt_runtime
from groupvit_edge.runtimes.tensorrt import build as trt_build

LABELS = [label for label, _ in harness.VERSIONS]
# (target, tensorrt_typing, int8_route): every choice a user can make.
CHOICES = [("trt-fp16", "auto", "explicit"), ("trt-fp16", "weak", "explicit"), ("trt-fp16", "strong", "explicit"),
           ("trt-int8", "auto", "explicit"), ("trt-int8", "weak", "explicit"), ("trt-int8", "auto", "implicit")]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=LABELS)
def label(request) -> str:
    harness.fetch_or_skip(request.param)
    return request.param


@pytest.fixture(scope="module")
def snapshot(label) -> dict:
    return harness.api_snapshot(label)


@pytest.fixture(scope="module", params=[label for label in LABELS if label.startswith("10.")])
def weak_snapshot(request) -> dict:
    """The 10.x versions: the ones with weak typing and implicit calibration."""
    harness.fetch_or_skip(request.param)
    return harness.api_snapshot(request.param)


def _plan(choice, version):
    """The plan for a user's choice on `version`, or the UserError that refuses it."""
    try:
        return trt_build.plan_build(choice[0], version, choice[1], choice[2])
    except UserError as refusal:
        return refusal


def _exists(snapshot: dict, name: str) -> str | None:
    """Why `name` (BUILD_API notation) is not usable as written in this version's real bindings; None if it is."""
    base = name.rstrip("()=")
    owner, _, member = base.rpartition(".")
    if not owner:
        if name.endswith("()"):
            described = snapshot["classes"].get(base)
            if described is not None:
                return None if "__init__" in described["methods"] else "has no constructor"
            return None if base in snapshot["functions"] else "does not exist"
        return None if base in snapshot["attributes"] or base in snapshot["classes"] or base in snapshot["enums"] \
            else "does not exist"
    if owner in snapshot["enums"]:
        return None if member in snapshot["enums"][owner] else "is not a member"
    found = harness.member(snapshot, base)
    if found is None:
        return "does not exist"
    if name.endswith("()"):
        return None if "method" in found else "is not a method"
    if name.endswith("="):
        return None if found.get("property", {}).get("writable") else "is not a writable property"
    return None if "property" in found or "attribute" in found else "is a method, read as a value"


# ----------------------------------------------------------------------------- 1. declared surface, real API

def test_every_declared_member_exists_in_the_real_bindings(label, snapshot):
    version = snapshot["version"]
    declared = set(trt_runtime.RUNTIME_API + trt_runtime.INSPECTOR_API)
    for choice in CHOICES:
        plan = _plan(choice, version)
        if isinstance(plan, trt_build.BuildPlan):
            declared |= set(trt_build.required_api(plan) + trt_build.required_api(trt_build.text_plan(plan)))
    problems = {name: why for name in sorted(declared) if (why := _exists(snapshot, name))}
    assert problems == {}, f"TensorRT {version}: {problems}"


def test_plans_refused_on_a_version_are_the_ones_its_api_cannot_build(label, snapshot):
    """Where versions differ the plan picks the path this version's API has: every refusal is backed by a member
    the real bindings lack, and every accepted plan's members exist (test above)."""
    version = snapshot["version"]
    for choice in CHOICES:
        plan = _plan(choice, version)
        if isinstance(plan, trt_build.BuildPlan):
            continue
        forced = trt_build.BuildPlan(choice[0], version, "weak", "fp32", (), ("FP16", "OBEY_PRECISION_CONSTRAINTS"),
                                     pin_float32=True, calibrator=choice[2] == "implicit")
        lacking = [name for name in trt_build.required_api(forced) if _exists(snapshot, name)]
        assert version.startswith("11.") and lacking, (choice, str(plan))
    if version.startswith("11."):
        weak = trt_build.BuildPlan("trt-fp16", version, "weak", "fp32", (), ("FP16", "OBEY_PRECISION_CONSTRAINTS"),
                                   pin_float32=True, calibrator=True)
        assert {name for name in trt_build.required_api(weak) if _exists(snapshot, name)} == {
            "BuilderFlag.FP16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", "ILayer.precision=",
            "ILayer.set_output_type()", "IInt8EntropyCalibrator2()", "IBuilderConfig.int8_calibrator=",
            "IBuilderConfig.set_calibration_profile()"}


def test_the_generated_fake_has_exactly_the_real_enums(label, snapshot):
    trt = fake_tensorrt(snapshot)
    for qualname, members in snapshot["enums"].items():
        enum = trt
        for part in qualname.split("."):
            enum = getattr(enum, part)
        assert {name: int(member) for name, member in enum.__members__.items()} == members, qualname
    assert hasattr(trt.BuilderFlag, "FP16") == (not snapshot["version"].startswith("11."))


# ------------------------------------------------------------------------- 2. product code, real bindings

REAL_BINDINGS_SCRIPT = r"""
import json, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import numpy as np
import tensorrt as trt
from groupvit_edge.errors import UserError
from groupvit_edge.exporters import tensorrt as e
from groupvit_edge.runtimes import tensorrt as r
from groupvit_edge.runtimes.tensorrt import build as b

out = {{"version": trt.__version__, "plans": {{}}, "dtypes": {{}}}}
for target, typing, route in {choices!r}:
    try:
        plan = b.plan_build(target, trt.__version__, typing, route)
    except UserError as refusal:
        out["plans"][f"{{target}}/{{typing}}/{{route}}"] = {{"refused": str(refusal)}}
        continue
    names = b.required_api(plan) + b.required_api(b.text_plan(plan)) + r.RUNTIME_API + r.INSPECTOR_API
    out["plans"][f"{{target}}/{{typing}}/{{route}}"] = {{
        "source": plan.source, "missing": b.missing_api(names, trt), "bits": b.network_flag_bits(plan, trt)}}
for name, member in trt.DataType.__members__.items():
    dtype = r.numpy_dtype(trt, member)
    out["dtypes"][name] = None if dtype is None else dtype.name
logger = r.tensorrt_logger(trt)
out["one_logger"] = logger is r.tensorrt_logger(trt) and isinstance(logger, trt.ILogger)
out["import_tensorrt"] = r.import_tensorrt() is trt
if hasattr(trt, "IInt8EntropyCalibrator2"):
    from tensorrt_harness.fake import FakeDeviceMemory, TensorRTWorld
    class Cache:
        def read(self): return None
        def write(self, data): self.data = data
    world = TensorRTWorld()
    memory = FakeDeviceMemory(world)
    stream = memory.stream()
    batches = iter([np.ones((8, 3, 4, 4), np.float32)])
    calibrator = e._entropy_calibrator(trt, batches, 8, Cache(), memory, stream, 8 * 3 * 4 * 4 * 4)
    pointers = calibrator.get_batch(["pixels"])
    out["calibrator"] = {{"is_calibrator": isinstance(calibrator, trt.IInt8Calibrator),
                         "batch_size": calibrator.get_batch_size(),
                         "pointer_is_device_memory": pointers == [calibrator.device_batch.ptr],
                         "exhausted": calibrator.get_batch(["pixels"]) is None}}
    calibrator.close()
    out["calibrator"]["freed"] = world.freed == pointers
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def real(label) -> dict:
    code = REAL_BINDINGS_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), choices=CHOICES)
    done = harness.run_with_bindings(label, code)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_plans_and_flags_with_the_real_module(real):
    version = real["version"]
    modern = version.startswith("11.")
    strong_bit = 1 if modern else 2          # STRONGLY_TYPED is enum value 0 on 11.x, 1 on 10.x (after EXPLICIT_BATCH)
    for choice, result in real["plans"].items():
        if "refused" in result:
            assert modern and ("removed weak typing" in result["refused"] or "removed implicit" in result["refused"])
            continue
        assert result["missing"] == [], (choice, result)
        assert result["bits"] in (0, strong_bit), (choice, result)
    assert real["plans"]["trt-int8/auto/explicit"] == {"source": "qdq-fp16", "missing": [], "bits": strong_bit}
    strong_fp16 = trt_runtime.version_parts(version)[:2] >= trt_build.STRONG_BY_DEFAULT_FROM
    assert real["plans"]["trt-fp16/auto/explicit"]["source"] == ("fp16" if strong_fp16 else "fp32")


def test_nptype_of_every_dtype_through_the_real_module(real):
    """The real nptype raises TypeError for types numpy lacks (BF16, FP8, INT4); the runtime maps those to None so
    it can name the tensor in a sentence instead of passing on a TypeError."""
    dtypes = real["dtypes"]
    assert dtypes["FLOAT"] == "float32" and dtypes["HALF"] == "float16" and dtypes["INT32"] == "int32"
    unresolvable = {name for name, dtype in dtypes.items() if dtype is None}
    assert {"BF16", "FP8", "INT4"} <= unresolvable <= {"BF16", "FP8", "INT4", "FP4", "E8M0"}


def test_logger_and_import_with_the_real_module(real):
    assert real["one_logger"] and real["import_tensorrt"]


def test_entropy_calibrator_subclasses_the_real_class(real):
    if real["version"].startswith("11."):
        assert "calibrator" not in real          # 11.x has no IInt8EntropyCalibrator2: no plan builds one
        return
    assert real["calibrator"] == {"is_calibrator": True, "batch_size": 8, "pointer_is_device_memory": True,
                                  "exhausted": True, "freed": True}


# --------------------------------------------------------------------------- 3. builder flow, recording fakes

def _build_probe(trt, tmp_path: Path, plan, *, profile=trt_build.BatchProfile(2, 4, 8), pin="policy",
                 calibrator=None, logs=None, graph=probe_image_graph):
    onnx_path = graph(tmp_path / "probe.onnx")
    record = onnx_record(tmp_path, "probe.onnx")
    kept = trt_build.kept_float_nodes(onnx_path) if pin == "policy" else pin
    return trt_build.build_engine(trt, onnx_path, tmp_path / "probe.engine", plan, record, profile, workspace_mb=64,
                                  timing_cache=tmp_path / "cache" / "timing.cache",
                                  pin=kept if plan.pin_float32 else None, calibrator=calibrator,
                                  log=(logs if logs is not None else []).append)


def _in_order(calls: list[str], expected: list[str]) -> bool:
    position = 0
    for call in calls:
        if position < len(expected) and call == expected[position]:
            position += 1
    return position == len(expected)


@pytest.mark.parametrize("choice", CHOICES, ids=["/".join(c) for c in CHOICES])
def test_builder_flow_per_version_and_plan(label, snapshot, choice, tmp_path):
    version = snapshot["version"]
    plan = _plan(choice, version)
    if not isinstance(plan, trt_build.BuildPlan):   # weak typing and implicit calibration: gone in 11
        assert version.startswith("11.") and ("removed weak typing" in str(plan) or "removed implicit" in str(plan))
        return
    world = TensorRTWorld()
    trt = fake_tensorrt(snapshot, world)
    trt_runtime.tensorrt_logger.cache_clear()
    calibrator = None
    if plan.calibrator:
        cache = engines.CalibrationCacheFile(tmp_path, {"weights_sha256": "ab" * 32}, log=lambda m: None)
        memory = FakeDeviceMemory(world)
        batches = iter([np.ones((8, 3, 8, 8), np.float32)] * 3)
        calibrator = engines._entropy_calibrator(trt, batches, 8, cache, memory, memory.stream(), 8 * 3 * 8 * 8 * 4)
    record = _build_probe(trt, tmp_path, plan, calibrator=calibrator)
    recorder = trt.recorder
    assert world.violations == []
    assert recorder.unchecked() == []                          # every bool TensorRT returned was looked at
    assert recorder.uncovered(trt_build.required_api(plan)) == []  # nothing touched that the plan did not declare
    assert _in_order(recorder.names(), [
        "Builder()", "Builder.create_network()", "OnnxParser()", "OnnxParser.parse_from_file()",
        "Builder.create_builder_config()", "IOptimizationProfile.set_shape()",
        "IBuilderConfig.add_optimization_profile()", "IBuilderConfig.set_timing_cache()",
        "Builder.build_serialized_network()", "ITimingCache.serialize()"])
    built = json.loads((tmp_path / "probe.engine").read_bytes())
    assert built["strongly_typed"] == (plan.typing == "strong")
    assert built["flags"] == list(plan.builder_flags)
    assert built["profile"] == {"pixels": [[2, 3, 8, 8], [4, 3, 8, 8], [8, 3, 8, 8]]}   # --batch-min/opt/max
    assert built["verbosity"] == "DETAILED"
    assert record.extra["profile"]["pixels"] == {"min": [2, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}
    pinned = {layer["node"] for layer in built["layers"] if layer["precision"]}
    if plan.pin_float32:
        # LayerNorm, Softmax (by type), GELU's Erf (keep-list) and the assignment MatMul — both of its layers.
        assigned = "/vision_model/encoder/stages.0/downsample/assign"
        assert pinned == {f"[ONNX Layer: {name}]" for name in (
            "/vision_model/encoder/layer_norm/LayerNormalization", "/vision_model/encoder/mlp/activation_fn/Erf",
            f"{assigned}/MatMul", f"{assigned}/Softmax")}
        assert sum(layer["node"] == f"[ONNX Layer: {assigned}/MatMul]" and bool(layer["precision"])
                   for layer in built["layers"]) == 2
    else:
        assert pinned == set()
    if plan.calibrator:
        assert built["calibration"] == {"from_cache": False, "batch": 8, "batches": 3}
        assert (tmp_path / "calibration").is_dir()
        pointer = calibrator.device_batch.ptr
        calibrator.close()
        assert world.freed == [pointer]
    assert (tmp_path / "cache" / "timing.cache").is_file()


def test_text_plan_builds_strongly_typed_on_every_version(label, snapshot, tmp_path):
    world = TensorRTWorld()
    trt = fake_tensorrt(snapshot, world)
    plan = trt_build.text_plan(trt_build.plan_build("trt-int8", snapshot["version"]))
    _build_probe(trt, tmp_path, plan)
    assert world.violations == [] and trt.recorder.uncovered(trt_build.required_api(plan)) == []
    assert json.loads((tmp_path / "probe.engine").read_bytes())["strongly_typed"]


def test_pins_follow_layer_metadata_not_layer_names(weak_snapshot, tmp_path):
    """Pins follow layer metadata: the helper layer of /blk/MatMul is *named* /blk/MatMul_1, and only the node
    /blk/MatMul_1's layers are pinned."""
    snapshot = weak_snapshot
    world = TensorRTWorld()
    trt = fake_tensorrt(snapshot, world)
    plan = trt_build.plan_build("trt-fp16", snapshot["version"], "weak")
    _build_probe(trt, tmp_path, plan, pin={"/blk/MatMul_1"}, graph=name_collision_graph,
                 profile=trt_build.BatchProfile(1, 1, 4))
    layers = json.loads((tmp_path / "probe.engine").read_bytes())["layers"]
    by_name = {layer["name"]: layer for layer in layers}
    assert by_name["/blk/MatMul_1"]["node"] == "[ONNX Layer: /blk/MatMul]"     # the collision is there…
    assert by_name["/blk/MatMul_1"]["precision"] is None                        # …and not pinned
    assert {name for name, layer in by_name.items() if layer["precision"]} == {"/blk/MatMul_1_2", "/blk/MatMul_1_3"}


def test_timing_cache_from_another_gpu_is_replaced_not_used(label, snapshot, tmp_path):
    """set_timing_cache returns False for a cache from another GPU (or a corrupt file); the build then attaches a
    fresh cache and saves it, so it neither builds without a cache nor fails on None.serialize() after writing the
    engine."""
    plan = trt_build.text_plan(trt_build.plan_build("trt-fp16", snapshot["version"]))
    _build_probe(fake_tensorrt(snapshot, TensorRTWorld(gpu="RTX 4090")), tmp_path, plan)
    cache = tmp_path / "cache" / "timing.cache"
    assert json.loads(cache.read_bytes())["gpu"] == "RTX 4090"
    logs = []
    orin = fake_tensorrt(snapshot, TensorRTWorld(gpu="Orin"))
    _build_probe(orin, tmp_path, plan, logs=logs)
    assert orin.recorder.unchecked() == []
    assert json.loads(cache.read_bytes()) == {"gpu": "Orin", "entries": 1}
    assert any("from another GPU/TensorRT; starting a new one" in line for line in logs)
    cache.write_bytes(b"not a timing cache")
    _build_probe(fake_tensorrt(snapshot, TensorRTWorld(gpu="Orin")), tmp_path, plan)
    assert json.loads(cache.read_bytes()) == {"gpu": "Orin", "entries": 1}


def test_a_failed_build_writes_no_engine(label, snapshot, tmp_path):
    trt = fake_tensorrt(snapshot, TensorRTWorld(fail_build=True))
    with pytest.raises(ValidationFailed, match="could not build probe.onnx"):
        _build_probe(trt, tmp_path, trt_build.text_plan(trt_build.plan_build("trt-fp16", snapshot["version"])))
    assert not (tmp_path / "probe.engine").exists()


def test_refused_calibration_profile_is_an_error(weak_snapshot, tmp_path):
    """set_calibration_profile reports a refusal only through its bool, so the build checks it and stops rather
    than calibrating with the wrong shapes."""
    snapshot = weak_snapshot
    world = TensorRTWorld(reject_calibration_profile=True)
    trt = fake_tensorrt(snapshot, world)
    memory = FakeDeviceMemory(world)
    cache = engines.CalibrationCacheFile(tmp_path, {"weights_sha256": "ab" * 32}, log=lambda m: None)
    calibrator = engines._entropy_calibrator(trt, iter([]), 8, cache, memory, memory.stream(), 64)
    plan = trt_build.plan_build("trt-int8", snapshot["version"], int8_route="implicit")
    with pytest.raises(RuntimeError, match="rejected the calibration profile"):
        _build_probe(trt, tmp_path, plan, calibrator=calibrator)


# --------------------------------------------------------------------------- 3. runtime flow, recording fakes

def _session(snapshot, tmp_path, world, profile=trt_build.BatchProfile(2, 4, 8), io_dtypes=None):
    """An EngineSession over the probe engine; the build runs in its own fake so the recorder holds the runtime's
    calls only."""
    builder = fake_tensorrt(snapshot, TensorRTWorld(io_dtypes=io_dtypes))
    _build_probe(builder, tmp_path, trt_build.text_plan(trt_build.plan_build("trt-fp16", snapshot["version"])),
                 profile=profile)
    trt = fake_tensorrt(snapshot, world)
    trt_runtime.tensorrt_logger.cache_clear()
    memory = FakeDeviceMemory(world)
    runtime = trt.Runtime(trt_runtime.tensorrt_logger(trt))
    return trt, trt_runtime.EngineSession(trt, runtime, tmp_path / "probe.engine", memory, memory.stream())


def test_runtime_pads_below_the_profile_minimum_and_chunks_above_its_maximum(label, snapshot, tmp_path):
    """A batch below the profile's minimum would make set_input_shape return False and execute_async_v3 fail, so
    with --batch-min 2 one window runs padded to 2 and comes back as 1; a batch above the maximum is chunked, so 9
    windows run as 8 + 1 (padded)."""
    import onnxruntime
    world = TensorRTWorld()
    trt, session = _session(snapshot, tmp_path, world)
    reference = onnxruntime.InferenceSession(str(tmp_path / "probe.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((9, 3, 8, 8)).astype(np.float32)
    for count in (1, 2, 3, 8, 9):
        ours = session.run({"pixels": pixels[:count]})
        theirs = dict(zip(["group_embeds", "image_embed", "grouping"], reference.run(None, {"pixels": pixels[:count]})))
        assert {name: value.shape for name, value in ours.items()} == {n: v.shape for n, v in theirs.items()}
        for name in theirs:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6)   # fp32 ORT both sides
    shapes = [call[1][1] for call in trt.recorder.calls if call[0] == "IExecutionContext.set_input_shape()"]
    assert min(shape[0] for shape in shapes) == 2 and max(shape[0] for shape in shapes) == 8
    assert trt.recorder.unchecked() == []
    assert trt.recorder.uncovered(trt_runtime.RUNTIME_API) == []
    session.close()
    assert len(world.freed) == 4                   # pixels and the three outputs


def test_concurrent_callers_of_one_session_get_their_own_answers(label, snapshot, tmp_path):
    """One execution context and one set of buffers: 8 threads calling at once must not mix their outputs."""
    import threading
    world = TensorRTWorld()
    _, session = _session(snapshot, tmp_path, world)
    batches = [np.random.default_rng(seed).standard_normal((3, 3, 8, 8)).astype(np.float32) for seed in range(8)]
    expected = [session.run({"pixels": batch})["group_embeds"] for batch in batches]
    results, errors = {}, []

    def call(index):
        try:
            for _ in range(5):
                results.setdefault(index, []).append(session.run({"pixels": batches[index]})["group_embeds"])
        except Exception as error:        # reported by the assertion below
            errors.append(repr(error))

    threads = [threading.Thread(target=call, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(np.array_equal(output, expected[index]) for index, outputs in results.items() for output in outputs)
    session.close()


def test_engine_with_io_numpy_cannot_hold_is_a_sentence(label, snapshot, tmp_path):
    """An engine output numpy cannot hold (BF16, for which nptype raises TypeError) is refused with a sentence
    naming the tensor and its type."""
    with pytest.raises(UserError, match="group_embeds of type BF16, which numpy cannot hold"):
        _session(snapshot, tmp_path, TensorRTWorld(), io_dtypes={"group_embeds": "BF16"})


def test_layer_precisions_from_the_engine_inspector(label, snapshot, tmp_path):
    trt, session = _session(snapshot, tmp_path, TensorRTWorld())
    session.run({"pixels": np.zeros((2, 3, 8, 8), np.float32)})
    layers = session.layer_precisions()
    assert len(layers) == len(json.loads((tmp_path / "probe.engine").read_bytes())["layers"])
    assert {layer.precision for layer in layers} == {"FP32"}     # the text plan: fp32 from an fp32 graph
    assert trt.recorder.uncovered(trt_runtime.RUNTIME_API + trt_runtime.INSPECTOR_API) == []


def test_one_logger_for_builds_and_runtimes(label, snapshot, tmp_path, monkeypatch):
    """TensorRT keeps the first logger it is given, so builds and runtimes share one per process."""
    world = TensorRTWorld()
    trt = fake_tensorrt(snapshot, world)
    install(monkeypatch, trt, world)
    plan = trt_build.text_plan(trt_build.plan_build("trt-fp16", snapshot["version"]))
    _build_probe(trt, tmp_path, plan)
    _build_probe(trt, tmp_path, plan)
    trt.Runtime(trt_runtime.tensorrt_logger(trt))
    assert world.loggers == 1
