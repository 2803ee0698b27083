"""Readiness checks of an artifact's graphs for a backend, runnable on a machine that lacks that backend.

- `checks.tensorrt`: will the ONNX parser and builder of TensorRT 10.3 (JetPack 6) accept these graphs? Its rules
  live in `checks.tensorrt_rules`.

Each check returns a `Report` of findings (severity, node, message) and never imports the backend it checks.
"""
