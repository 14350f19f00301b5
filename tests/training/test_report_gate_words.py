"""The report's words on the intended-use gate are true for any manifest (issue 24 site re-run 2:
a site's own films were told they were "the shared development films ... downsampled copies")."""

from __future__ import annotations

from cxr_triage.training.report_scoring import GATE_BYPASS, gate_bypass


def test_site_films_are_not_called_the_shared_development_films() -> None:
    site = gate_bypass(["site24b", "site24b"])
    assert site == GATE_BYPASS and "scored without the intended-use gate" in site
    assert "shared development films" not in site and "cxr-triage evaluate" in site


def test_the_shared_films_are_named_when_the_manifest_has_them() -> None:
    shared = gate_bypass(["site24b", "rsna-normals"])
    assert shared.startswith(GATE_BYPASS) and "downsampled copies (224-512 px)" in shared
