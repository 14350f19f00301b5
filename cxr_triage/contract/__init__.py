"""The domain contract: what every stage agrees on, importing nothing else of ours.

- :mod:`.result` — Decision, NotAssessableReason, FilmResult, StudyResult, aggregate_study
- :mod:`.decision` — ``decide`` (one film) and ``decide_many`` (vectorised, for offline callers)
- :mod:`.operating_points` — operating-point names and threshold resolution
- :mod:`.model_file` — what an ONNX model file says about itself (metadata_props)
- :mod:`.preprocessing` — the one preprocessing definition (training, export, worker)
- :mod:`.sop_classes` — the SOP classes the node accepts, triages and produces
- :mod:`.patient` — Patient's Age (AS) parsing
- :mod:`.files` — SHA-256 of files, JSON helpers

``tests/test_architecture.py`` checks that nothing here imports another module of ours.
"""
