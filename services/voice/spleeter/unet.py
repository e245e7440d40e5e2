"""Spleeter's two U-Nets as one ONNX graph, built from the official TensorFlow variables.

Reproduces `apply_unet` of spleeter/model/functions/unet.py with the 2stems parameters
(resources/2stems.json: model "unet.unet", no params, so LeakyReLU(0.2) in the encoder and
ReLU in the decoder), once per stem, both reading the same input:
- encoder: six 5x5 stride-2 convolutions (16, 32, 64, 128, 256, 512 filters), each followed by
  batch norm and LeakyReLU; the skip connections carry the convolutions' raw outputs, and the
  decoder starts from the sixth convolution's raw output (its batch norm is never used);
- decoder: six 5x5 stride-2 transposed convolutions (256, 128, 64, 32, 16, 1), each followed
  by ReLU then batch norm, concatenated after the matching encoder output (skip first);
  dropout (0.5 on the first three) is inactive at inference;
- a 4x4 convolution with dilation 2 to two channels, sigmoid: the mask, times the input.
Keras layers pad "same": for stride 2 on even sizes that is 1 before and 2 after, which ONNX
`pads` express directly (for the transposed convolutions, as the crop of the full output).
Keras batch norm uses epsilon 1e-3 and, at inference, the moving statistics.

Input `magnitude` (batch, 2, frames, bins); outputs `vocals` and `accompaniment`, the same shape:
each stem's estimated magnitudes, which the engine turns into ratio masks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

ENCODER_FILTERS = (16, 32, 64, 128, 256, 512)
DECODER_FILTERS = (256, 128, 64, 32, 16, 1)
KERNEL = 5
INPUT_CHANNELS = 2  # stereo magnitudes
KERAS_BATCH_NORM_EPSILON = 1e-3
LEAKY_SLOPE = 0.2
# Keras "same" padding of a stride-2 5x5 convolution on an even size: (before, after).
SAME_PAD = (1, 2)
MASK_KERNEL, MASK_DILATION, MASK_PAD = 4, 2, 3
OPSET = 17
INPUT = "magnitude"


class KerasNames:
    """Keras names one stem's layers got, in creation order: stem i's layers follow stem i-1's.

    Per stem: 7 Conv2D (six encoder, then the mask), 6 Conv2DTranspose, 12 BatchNormalization.
    """

    def __init__(self, stem_index: int) -> None:
        def name(base: str, index: int) -> str:
            return base if index == 0 else f"{base}_{index}"

        self.convs = [name("conv2d", stem_index * 7 + i) for i in range(7)]
        self.deconvs = [name("conv2d_transpose", stem_index * 6 + i) for i in range(6)]
        self.norms = [name("batch_normalization", stem_index * 12 + i) for i in range(12)]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every variable of this stem and the shape the 2stems network gives it."""
        shapes: dict[str, tuple[int, ...]] = {}
        inputs = (INPUT_CHANNELS, *ENCODER_FILTERS)
        for index, layer in enumerate(self.convs[:6]):
            shapes[f"{layer}/kernel"] = (KERNEL, KERNEL, inputs[index], inputs[index + 1])
            shapes[f"{layer}/bias"] = (inputs[index + 1],)
        mask = self.convs[6]
        shapes[f"{mask}/kernel"] = (MASK_KERNEL, MASK_KERNEL, 1, INPUT_CHANNELS)
        shapes[f"{mask}/bias"] = (INPUT_CHANNELS,)
        decoder_inputs = (512, 512, 256, 128, 64, 32)  # previous output + skip, concatenated
        for index, layer in enumerate(self.deconvs):
            # Conv2DTranspose kernels are (kh, kw, out, in).
            out = DECODER_FILTERS[index]
            shapes[f"{layer}/kernel"] = (KERNEL, KERNEL, out, decoder_inputs[index])
            shapes[f"{layer}/bias"] = (out,)
        for layer, channels in zip(self.norms, ENCODER_FILTERS + DECODER_FILTERS, strict=True):
            for part in ("gamma", "beta", "moving_mean", "moving_variance"):
                shapes[f"{layer}/{part}"] = (channels,)
        return shapes


def check_variables(variables: dict[str, np.ndarray], stem_names: tuple[str, ...]) -> None:
    """ValueError saying what is missing or misshapen, for the first stem where it is."""
    for index, stem in enumerate(stem_names):
        expected = KerasNames(index).expected_shapes()
        missing = [name for name in expected if name not in variables]
        if missing:
            raise ValueError(
                f"lacks {len(missing)} variable(s) of the {stem} network (e.g. {missing[0]}): "
                "not a 2stems checkpoint"
            )
        for name, shape in expected.items():
            if tuple(variables[name].shape) != shape:
                raise ValueError(
                    f"does not fit the 2stems network: {name} has shape "
                    f"{variables[name].shape}, expected {shape}"
                )


def build_model(variables: dict[str, np.ndarray], stem_names: tuple[str, ...]) -> onnx.ModelProto:
    """The ONNX model of one U-Net per stem, from variables `check_variables` accepted."""
    import onnx  # only when converting: the runtime needs onnxruntime alone
    from onnx import TensorProto, helper, numpy_helper

    nodes: list = []
    weights: list = []

    def weight(name: str, array: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def kernel(layer: str) -> str:
        # Keras kernels are (kh, kw, in, out) for Conv2D and (kh, kw, out, in) for
        # Conv2DTranspose; ONNX wants (out, in, kh, kw) and (in, out, kh, kw): one permutation.
        return weight(f"{layer}/kernel", variables[f"{layer}/kernel"].transpose(3, 2, 0, 1))

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def bias(layer: str) -> str:
        return weight(f"{layer}/bias", variables[f"{layer}/bias"])

    def norm(x: str, layer: str) -> str:
        parts = [weight(f"{layer}/{part}", variables[f"{layer}/{part}"])
                 for part in ("gamma", "beta", "moving_mean", "moving_variance")]  # fmt: skip
        return node("BatchNormalization", [x, *parts], f"{layer}/out",
                    epsilon=KERAS_BATCH_NORM_EPSILON)  # fmt: skip

    stride = {"kernel_shape": [KERNEL, KERNEL], "strides": [2, 2],
              "pads": [SAME_PAD[0], SAME_PAD[0], SAME_PAD[1], SAME_PAD[1]]}  # fmt: skip
    outputs = []
    for index, stem in enumerate(stem_names):
        names = KerasNames(index)
        x, skips = INPUT, []
        for layer, norm_layer in zip(names.convs[:6], names.norms[:6], strict=True):
            raw = node("Conv", [x, kernel(layer), bias(layer)], f"{layer}/raw", **stride)
            skips.append(raw)
            x = node("LeakyRelu", [norm(raw, norm_layer)], f"{layer}/act", alpha=LEAKY_SLOPE)
        x = skips.pop()  # the decoder starts from the last convolution's raw output
        decoder = zip(names.deconvs, names.norms[6:], strict=True)
        for step, (layer, norm_layer) in enumerate(decoder):
            up = node("ConvTranspose", [x, kernel(layer), bias(layer)], f"{layer}/raw", **stride)
            x = norm(node("Relu", [up], f"{layer}/act"), norm_layer)
            if step < 5:
                x = node("Concat", [skips.pop(), x], f"{layer}/cat", axis=1)
        mask_layer = names.convs[6]
        mask = node(
            "Conv",
            [x, kernel(mask_layer), bias(mask_layer)],
            f"{mask_layer}/raw",
            kernel_shape=[MASK_KERNEL, MASK_KERNEL],
            dilations=[MASK_DILATION, MASK_DILATION],
            pads=[MASK_PAD] * 4,
        )
        node("Mul", [node("Sigmoid", [mask], f"{stem}/mask"), INPUT], stem)
        outputs.append(stem)

    dims: list[str | int | None] = ["batch", INPUT_CHANNELS, "frames", "bins"]
    graph = helper.make_graph(
        nodes,
        "spleeter_2stems",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims) for name in outputs],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(model)
    return model
