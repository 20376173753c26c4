"""The station's start-up self-check, before a lot is judged: the right model, unchanged, on a station
that runs it as export did. ``qc`` calls ``station_startup`` once, before reading any image; any
failure is a refusal with no verdict (exit 2).

In order: the spec's signature (when the station has approver keys), the model file read once and
hashed (``load_model``: the session is built from those same bytes, so the hash is of what runs),
its approval (``core.approval.check_approved``: SHA-256 pinned by the spec, metadata matching the
approval record), a ``MODEL.sig`` if present, and the model's conformance vectors
(``runtime.verify``): a station whose decoding, preprocessing or kernels differ from export's
would judge with numbers nobody validated.

``mscvision compare --lot`` runs the same check on its CANDIDATE with ``require_approval=False``: a
candidate is by definition not approved yet, and its verdicts on a reference lot are the evidence for
approving it. Only the refusal is lifted: the approval is still looked up and what it found is
returned (``StartupCheck.unapproved`` says why it would be refused); the signatures and conformance
vectors are checked as for qc. ``qc`` never passes it: a station judges with approved models only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mscvision.core.approval import ApprovalError, check_approved, check_file_signature
from mscvision.core.errors import ConfigError
from mscvision.runtime.model import Model, load_model
from mscvision.runtime.verify import default_vectors_dir, verify_model


class StationRefused(ConfigError):
    """The start-up self-check failed: this station does not judge with this model (exit 2)."""


@dataclass(frozen=True)
class StartupCheck:
    model: Model
    approval: dict | None  # the spec's approval entry for this model (None: unapproved, see ``unapproved``)
    spec_sha256: str
    signatures: dict  # {"spec": record or None, "model": record or None}
    conformance: dict  # {"passed", "cases", "probability_max_abs", "vectors"}
    unapproved: str | None = None  # why the approval check refuses this model (only with require_approval=False)

    def audit_fields(self, spec_path: str | os.PathLike) -> dict:
        """The run record's ``model`` and ``spec`` entries (core.audit.RUN_FIELDS)."""
        return {"model": {"path": str(self.model.path), "sha256": self.model.sha256,
                          "name": self.model.metadata.raw.get("name"), "precision": self.model.metadata.precision,
                          "approval": self.approval, "signature": self.signatures["model"],
                          "conformance": self.conformance, "providers": self.model.providers},
                "spec": {"path": str(spec_path), "sha256": self.spec_sha256, "signature": self.signatures["spec"]}}


def station_startup(model_path: str | os.PathLike, spec: object, spec_path: str | os.PathLike, *,
                    spec_sha256: str | None = None, vectors: str | os.PathLike | None = None,
                    approver_keys=(), threads: int = 0, device: str = "auto",
                    require_approval: bool = True) -> StartupCheck:
    """Load the model only if it is approved and passes its conformance vectors; ``spec`` is the parsed
    spec (its ``approval`` section), ``spec_sha256`` the hash of the bytes it was parsed from (computed
    from ``spec_path`` when not given). ``ApprovalError`` / ``StationRefused`` / ``ModelError`` otherwise.

    ``require_approval=False`` (compare's candidate only, never qc): a model the spec does not approve is
    not refused; ``approval`` is then None and ``unapproved`` holds the refusal it would have been."""
    from mscvision.core.fileio import sha256_file

    spec_sha256 = spec_sha256 or sha256_file(spec_path)
    spec_signature = check_file_signature(spec_path, spec_sha256, approver_keys, required=bool(approver_keys))
    model = load_model(model_path, threads, device)
    unapproved = None
    try:
        approval = check_approved(model.path, model.sha256, model.metadata.raw, spec, where=str(spec_path))
    except ApprovalError as exc:
        if require_approval:
            raise
        approval, unapproved = None, str(exc)
    model_signature = check_file_signature(model.path, model.sha256, approver_keys, required=False)
    folder = Path(vectors) if vectors is not None else default_vectors_dir(model.path)
    report = verify_model(model, folder)
    if not report.passed:
        shown = "; ".join(report.failures[:3]) + (f"; … {len(report.failures) - 3} more" if len(report.failures) > 3
                                                   else "")
        raise StationRefused(f"{model.path}: the start-up self-check against its conformance vectors ({folder}) "
                             f"failed: {shown or 'no case was checked'}. No lot is judged on this station until "
                             "`mscvision verify MODEL` passes (same model, its own NAME.vectors folder, the station's "
                             "onnxruntime build).")
    conformance = {"passed": True, "cases": report.cases, "probability_max_abs": report.probability_max_abs,
                   "vectors": str(folder)}
    return StartupCheck(model, approval, spec_sha256, {"spec": spec_signature, "model": model_signature}, conformance,
                        unapproved)
