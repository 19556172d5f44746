"""The model's preprocessing as ONNX nodes, so an exported file takes decoded pixels.

The graph takes ``image``: uint8, NHWC, RGB or grey (C = 3 or 1), any height and width (one
size per batch). It does what ``vectors.preprocess.eval_transform`` does with Pillow: grey to
RGB, an antialiased resize (the shorter side to ``resize_size`` then the centre square, or the
whole image squeezed), rounding to 8 bits as Pillow's resize does, then normalisation. Only
decoding (JPEG, PNG) stays outside: ONNX has no operator for it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tlpipe.vectors.backbones import Preprocessing

IMAGE_INPUT = "image"
# ONNX Resize's cubic filter defaults to a = -0.75; Pillow's bicubic (which evaluation uses)
# is a = -0.5.
PILLOW_CUBIC_COEFFICIENT = -0.5


def with_preprocessing(classifier: onnx.ModelProto, preprocessing: Preprocessing
                       ) -> onnx.ModelProto:
    """``classifier`` (input ``pixels``: normalised float32 NCHW) behind the nodes that turn
    uint8 images into those pixels."""
    graph = classifier.graph
    (pixels,) = [value for value in graph.input if value.name == "pixels"]
    nodes, constants = _preprocessing_nodes(preprocessing, output="pixels")
    image = helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8,
                                          ["batch", "height", "width", "channels"])
    graph.input.remove(pixels)
    graph.input.insert(0, image)
    graph.initializer.extend(constants)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)
    onnx.checker.check_model(classifier)
    return classifier


def _preprocessing_nodes(preprocessing: Preprocessing, output: str
                         ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    constants: list[onnx.TensorProto] = []

    def constant(name: str, value) -> str:
        constants.append(numpy_helper.from_array(np.asarray(value), f"pre_const_{name}"))
        return f"pre_const_{name}"

    size = preprocessing.input_size
    mean = np.asarray(preprocessing.mean, np.float32).reshape(1, 3, 1, 1) * 255
    std = np.asarray(preprocessing.std, np.float32).reshape(1, 3, 1, 1) * 255
    node = helper.make_node
    nodes = [
        node("Cast", [IMAGE_INPUT], ["pre_float"], to=TensorProto.FLOAT),
        # Broadcasting the channel axis to 3 turns grey into RGB and leaves RGB as it is.
        node("Expand", ["pre_float", constant("rgb", np.array([1, 1, 1, 3], np.int64))],
             ["pre_rgb"]),
        node("Transpose", ["pre_rgb"], ["pre_nchw"], perm=[0, 3, 1, 2]),
        node("Shape", ["pre_nchw"], ["pre_shape"]),
        node("Slice", ["pre_shape", constant("zero", np.array([0], np.int64)),
                       constant("two", np.array([2], np.int64))], ["pre_batch_channels"]),
    ]
    if preprocessing.resize == "resize":
        nodes.append(node("Concat", ["pre_batch_channels",
                                     constant("square", np.array([size, size], np.int64))],
                          ["pre_sizes"], axis=0))
    else:
        # torchvision's Resize(int): the shorter side becomes resize_size and the longer
        # int(resize_size * long / short), which integer division gives exactly.
        nodes += [
            node("Slice", ["pre_shape", "pre_const_two", constant("four", np.array([4], np.int64))],
                 ["pre_height_width"]),
            node("ReduceMin", ["pre_height_width"], ["pre_shorter"], keepdims=1),
            node("Mul", ["pre_height_width",
                         constant("resize_size", np.array(preprocessing.resize_size, np.int64))],
                 ["pre_scaled"]),
            node("Div", ["pre_scaled", "pre_shorter"], ["pre_resized_height_width"]),
            node("Concat", ["pre_batch_channels", "pre_resized_height_width"], ["pre_sizes"],
                 axis=0),
        ]
    interpolation = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest"}[
        preprocessing.interpolation]
    # Pillow resizes in two passes, the width then the height, rounding and clipping to 8
    # bits after each; bicubic overshoots, so one float pass would not clip where it does.
    nodes += [
        node("Shape", ["pre_nchw"], ["pre_height_only"], start=2, end=3),
        node("Slice", ["pre_sizes", constant("three", np.array([3], np.int64)),
                       constant("four_", np.array([4], np.int64))], ["pre_new_width"]),
        node("Concat", ["pre_batch_channels", "pre_height_only", "pre_new_width"],
             ["pre_width_sizes"], axis=0),
    ]
    source = "pre_nchw"
    for name, sizes in (("width", "pre_width_sizes"), ("height", "pre_sizes")):
        nodes += [
            node("Resize", [source, "", "", sizes], [f"pre_{name}_float"], mode=interpolation,
                 antialias=1, cubic_coeff_a=PILLOW_CUBIC_COEFFICIENT, exclude_outside=1,
                 coordinate_transformation_mode="half_pixel"),
            node("Round", [f"pre_{name}_float"], [f"pre_{name}_rounded"]),
            node("Clip", [f"pre_{name}_rounded", constant(f"black_{name}", np.array(0, np.float32)),
                          constant(f"white_{name}", np.array(255, np.float32))],
                 [f"pre_{name}_resized"]),
        ]
        source = f"pre_{name}_resized"
    fitted = "pre_height_resized"
    if preprocessing.resize == "crop":
        # torchvision's CenterCrop: top = round((height - size) / 2), halves to even, as
        # ONNX's Round does.
        nodes += [
            node("Sub", ["pre_resized_height_width", constant("size", np.array(size, np.int64))],
                 ["pre_margin"]),
            node("Cast", ["pre_margin"], ["pre_margin_float"], to=TensorProto.FLOAT),
            node("Div", ["pre_margin_float", constant("half", np.array(2, np.float32))],
                 ["pre_half_margin"]),
            node("Round", ["pre_half_margin"], ["pre_start_float"]),
            node("Cast", ["pre_start_float"], ["pre_start"], to=TensorProto.INT64),
            node("Add", ["pre_start", "pre_const_size"], ["pre_end"]),
            node("Slice", ["pre_height_resized", "pre_start", "pre_end",
                           constant("height_width_axes", np.array([2, 3], np.int64))],
                 ["pre_cropped"]),
        ]
        fitted = "pre_cropped"
    nodes += [
        node("Sub", [fitted, constant("mean", mean)], ["pre_centred"]),
        node("Div", ["pre_centred", constant("std", std)], [output]),
    ]
    return nodes, constants
