"""A tiny ONNX model with the real model's contract (inputs, outputs, metadata), built with
``onnx.helper`` (no torch), so worker tests do not depend on which trained model ships."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from cxr_triage.contract.model_file import (
    HEATMAP_OUTPUT,
    INPUT_NAME,
    METADATA_KEY,
    NODULE_OUTPUT,
    SCORE_OUTPUT,
    ModelMetadata,
)
from cxr_triage.contract.preprocessing import PreprocessSpec

#: Nodule/mass operating points of a model built with ``nodule=True`` (default: "sens_0.9").
NODULE_THRESHOLDS = {"sens_0.8": 0.6, "sens_0.9": 0.5, "sens_0.95": 0.4}


def build_tiny_model(path: Path, size: int = 224, weight: float = 4.0, bias: float = 0.0,
                     thresholds: dict[str, float] | None = None, *, nodule: bool = False,
                     nodule_weight: float = -4.0, nodule_bias: float = 0.0,
                     nodule_thresholds: dict[str, float] | None = None,
                     heatmap_validated: bool = True) -> Path:
    """score = sigmoid(weight * mean(x) + bias); heatmap = sigmoid(avgpool32(x)); with
    ``nodule``, also nodule_score = sigmoid(nodule_weight * mean(x) + nodule_bias) (the
    defaults make it 1 - score) and nodule/mass thresholds (``NODULE_THRESHOLDS`` unless
    given; an empty dict gives the output without thresholds, i.e. unusable).

    ``heatmap_validated`` is True by default so the tests that check heatmaps being shown
    see them; pass False for a model whose heatmap must not be displayed.
    """
    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, size, size])
    score = helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["N"])
    heat = helper.make_tensor_value_info(HEATMAP_OUTPUT, TensorProto.FLOAT, ["N", size // 32, size // 32])
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT, [], [weight]),
        helper.make_tensor("b", TensorProto.FLOAT, [], [bias]),
        helper.make_tensor("axes123", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("axes1", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME, "axes123"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "w"], ["mw"]),
        helper.make_node("Add", ["mw", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [SCORE_OUTPUT]),
        helper.make_node("AveragePool", [INPUT_NAME], ["pool"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Squeeze", ["pool", "axes1"], ["pool2"]),
        helper.make_node("Sigmoid", ["pool2"], [HEATMAP_OUTPUT]),
    ]
    outputs = [score]
    if nodule:  # the export's output order: score, nodule_score, heatmap
        inits += [helper.make_tensor("nw", TensorProto.FLOAT, [], [nodule_weight]),
                  helper.make_tensor("nb", TensorProto.FLOAT, [], [nodule_bias])]
        nodes += [helper.make_node("Mul", ["m", "nw"], ["nmw"]),
                  helper.make_node("Add", ["nmw", "nb"], ["nlogit"]),
                  helper.make_node("Sigmoid", ["nlogit"], [NODULE_OUTPUT])]
        outputs.append(helper.make_tensor_value_info(NODULE_OUTPUT, TensorProto.FLOAT, ["N"]))
    outputs.append(heat)
    graph = helper.make_graph(nodes, "tiny_cxr", [x], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = ModelMetadata(
        name="tiny-test-model",
        version="0.0.1-test",
        preprocessing=PreprocessSpec(size=size, harmonise_size=size),
        thresholds=thresholds or {"sens_0.95": 0.45, "sens_0.98": 0.40, "sens_0.99": 0.35},
        default_operating_point="sens_0.98",
        nodule_thresholds=(dict(NODULE_THRESHOLDS if nodule_thresholds is None else nodule_thresholds)
                           if nodule else {}),
        nodule_default_operating_point="sens_0.9",
        heatmap_validated=heatmap_validated,
        architecture="tiny-test",
    )
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
