"""INT8 quantization of the image graph, one step per module, each taking and returning typed records:

    policy        what may be quantized (the model's block names) and what stays float
    statistics    activation statistics from the calibration photos (NNCF, ONNX Runtime's calibrators)
    cache         a calibration reused only when everything that made it is the same
    form          the QDQ form for the device: S8/U8 activations, 7/8-bit weights, blocks back to float
    measure       the candidate against fp32 on held-out photos, as it will run
    search        the drift budget: fewest blocks back in float that fit
    pipeline      `to_int8`, the one entry point exporters call

`calibration_set` holds the photos (calibration and held-out); `records` what the steps hand each other. This
package imports nothing at its own level, so `runtimes` may read `form` without pulling in the rest.
"""
