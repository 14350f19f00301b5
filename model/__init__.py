"""The model's contract: preprocessing, metadata stored in the ONNX file, and the network.

``preprocessing`` and ``metadata`` are numpy-only and shared by training, export and the
worker. ``network`` and ``export`` need torch (the ``train`` extra) and are imported only there.
"""

from cxr_triage.model.metadata import METADATA_KEY, ModelMetadata
from cxr_triage.model.preprocessing import PreprocessSpec, preprocess

__all__ = ["METADATA_KEY", "ModelMetadata", "PreprocessSpec", "preprocess"]
