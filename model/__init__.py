"""The bundled model: the ONNX file the worker serves, its model card and the split it was
trained on. No code that needs torch lives here: the network and the ONNX export are under
``cxr_triage.training``; what a model file must say about itself is
``cxr_triage.contract.model_file``.
"""
