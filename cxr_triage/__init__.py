"""cxr-triage: AI chest X-ray triage worker.

The path of one film, stage by stage (see README "Where things happen"):
receive (dicom_node.scp) -> spool + queue (dicom_node.spool, dicom_node.queue) -> decode
(inference.reader) -> intended-use gate (inference.gate) -> score (inference.scorer) ->
decide (inference.decision) -> report (dicom_node.sr) -> deliver (dicom_node.delivery).
"""

__version__ = "0.1.0"
