"""cxr-triage: AI chest X-ray triage worker.

The path of one film, stage by stage (docs/architecture.md lists it module by module):
receive (dicom_node.receive.scp) -> spool + job store (dicom_node.store.spool, .store.jobs) ->
worker stages (dicom_node.worker.triage) -> intended-use gate (inference.gate) -> decode
(inference.reader) -> score (inference.scorer) -> decide (contract.decision) -> report
(dicom_node.results.sr) -> deliver (dicom_node.delivery.deliverer).
"""

__version__ = "0.1.0"
