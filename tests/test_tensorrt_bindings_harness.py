"""The harness that imports NVIDIA's real TensorRT bindings over stub libraries (tests/tensorrt_harness).

Each version's wheel is downloaded once into the cache; without network these tests skip with the reason.
"""
from __future__ import annotations

import json

import pytest

import tensorrt_harness as harness

LABELS = [label for label, _ in harness.VERSIONS]


@pytest.fixture(params=LABELS)
def label(request) -> str:
    harness.fetch_or_skip(request.param)
    return request.param


def test_import_tensorrt_gives_the_real_bindings_of_that_version(label):
    done = harness.run_with_bindings(label, "import json, tensorrt\n"
                                            "print(json.dumps([tensorrt.__version__, tensorrt.Builder.__module__]))")
    assert done.returncode == 0, done.stderr
    version, builder_module = json.loads(done.stdout)
    assert version == harness.pinned_version(label)
    assert builder_module == "tensorrt_bindings.tensorrt"   # the compiled extension, not a Python stand-in


def test_stubbed_libraries_refuse_to_make_objects_instead_of_crashing(label):
    """What can be exercised in-process: nothing that needs a Builder or Runtime."""
    done = harness.run_with_bindings(label, "import tensorrt\n"
                                            "for make in (tensorrt.Builder, tensorrt.Runtime):\n"
                                            "    try:\n"
                                            "        make(tensorrt.Logger())\n"
                                            "    except TypeError as error:\n"
                                            "        print(error)\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["pybind11::init(): factory function returned nullptr"] * 2


def test_snapshot_describes_enums_classes_and_nptype(label):
    snapshot = harness.api_snapshot(label)
    assert snapshot["version"] == harness.pinned_version(label)
    assert "STRONGLY_TYPED" in snapshot["enums"]["NetworkDefinitionCreationFlag"]
    assert snapshot["enums"]["ILogger.Severity"]["WARNING"] == 2
    assert snapshot["classes"]["Logger"]["attributes"]["WARNING"] == "ILogger.Severity.WARNING"
    assert snapshot["classes"]["Builder"]["methods"]["create_network"][0].startswith("create_network(self: Builder")
    assert harness.member(snapshot, "IConvolutionLayer.name")["property"]["writable"]   # found on ILayer
    assert snapshot["nptype"]["HALF"] == "float16"
