"""Approved models only: the QC spec's ``approval`` section, checked against the model that is to run.

The section (a plain mapping; the qc spec loader passes it through as parsed) pins each approved
model file by SHA-256 and restates what the quality unit approved, so that a hash pasted from the
wrong model is caught by its own metadata::

    approval:
      models:
        - sha256: 9f2c…                      # of the .onnx file (mscvision info MODEL prints it)
          name: msc-resnet18                 # metadata "name"
          precision: fp32                    # metadata "precision"
          config_hash: 679fd0e6ddb80f29      # metadata provenance.config_hash (optional)
          tasks:                             # every task, classes in output order
            morphology: {classes: [flattened, spindle], threshold: 0.62}   # threshold, temperature: optional
          change_control: CC-2026-017        # free text, recorded with every run (optional)
          approved_by: "J. Doe, QA"          # free text: a name, NOT an electronic signature (optional)
          approved_on: "2026-05-01"          # (optional)

``mscvision audit approval MODEL`` prints this entry for a model. ``check_approved`` refuses any
other file, and a file whose embedded metadata differs from its entry, with the reason and the fix.

Signatures (optional, Ed25519, C2SP signed-note): ``mscvision audit sign FILE --key APPROVER.key``
writes ``FILE.sig`` stating the file's SHA-256. A station configured with approver public keys
requires ``SPEC.sig`` (the spec pins the model hashes, so it signs the model choice too) and checks
a ``MODEL.sig`` when one is present. The trust anchor is the station's configured keys, never a key
named inside the spec: a spec cannot vouch for itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

from mscvision.core.errors import ConfigError
from mscvision.core.signing import SigningError, fingerprint, key_id, note_problem, parse_note, sign_note

CHECKED = ("name", "precision", "config_hash", "tasks")
INFORMATIONAL = ("change_control", "approved_by", "approved_on", "note")
TASK_KEYS = ("classes", "threshold", "temperature")
SIGNED_FILE = "mscvision.signed-file/v1"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ApprovalError(ConfigError):
    """The model is not approved by the spec, or does not match its approval record: no verdict (exit 2)."""


# --- the spec's approval section ----------------------------------------------------------------------

def approval_models(spec: object, where: str = "spec") -> list[dict]:
    """The validated ``approval.models`` entries of a parsed spec (a mapping, or an object with an
    ``approval`` attribute); ``ConfigError`` naming the key for anything malformed."""
    section = spec.get("approval") if isinstance(spec, Mapping) else getattr(spec, "approval", None)
    if not isinstance(section, Mapping):
        raise ApprovalError(f"{where}: no 'approval' section, so no model is approved to judge with it. Fix: add "
                            "approval.models with the approved model's entry (`mscvision audit approval MODEL` "
                            "prints it).")
    unknown = set(section) - {"models"}
    if unknown:
        raise ConfigError(f"{where}: approval.{sorted(unknown)[0]}: unknown key (approval holds 'models')")
    models = section.get("models")
    if not isinstance(models, list) or not models:
        raise ApprovalError(f"{where}: approval.models must list at least one approved model")
    return [_entry(m, f"{where}: approval.models[{i}]") for i, m in enumerate(models)]


def _entry(entry: object, where: str) -> dict:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: an entry is a mapping (sha256, name, precision, tasks, …)")
    unknown = set(entry) - {"sha256", *CHECKED, *INFORMATIONAL}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key (known: sha256, {', '.join(CHECKED)}, "
                          f"{', '.join(INFORMATIONAL)})")
    for key in ("sha256", "name", "precision", "tasks"):
        if key not in entry:
            raise ConfigError(f"{where}.{key}: missing (an approval pins sha256, name, precision and tasks)")
    if not isinstance(entry["sha256"], str) or not _HEX64.fullmatch(entry["sha256"].lower()):
        raise ConfigError(f"{where}.sha256: {entry['sha256']!r} is not a SHA-256 (64 hex digits)")
    tasks = entry["tasks"]
    if not isinstance(tasks, Mapping) or not tasks:
        raise ConfigError(f"{where}.tasks: a mapping of task name to {{classes: [...]}}")
    for name, task in tasks.items():
        if not isinstance(task, Mapping) or not isinstance(task.get("classes"), list) or set(task) - set(TASK_KEYS):
            raise ConfigError(f"{where}.tasks.{name}: {{classes: [...], threshold: x, temperature: x}} "
                              "(classes required, in output order)")
    return {**entry, "sha256": entry["sha256"].lower()}


def approval_entry(model_sha256: str, metadata: dict) -> dict:
    """The approval entry describing a model as it is (for ``mscvision audit approval MODEL``)."""
    entry = {"sha256": model_sha256, "name": metadata.get("name"), "precision": metadata.get("precision"),
             "config_hash": (metadata.get("provenance") or {}).get("config_hash"),
             "tasks": {t["name"]: {"classes": list(t["classes"]), "threshold": t.get("threshold"),
                                   "temperature": t.get("temperature")} for t in metadata.get("tasks", [])}}
    return {k: v for k, v in entry.items() if v is not None}


# --- the check ----------------------------------------------------------------------------------------

def check_approved(model_path: str | os.PathLike, model_sha256: str, embedded_metadata: dict, spec: object,
                   where: str = "spec") -> dict:
    """The approval entry of this model, or ``ApprovalError``: the file's SHA-256 is approved by no entry,
    or the entry for it disagrees with the model's embedded metadata (the entry or the file is wrong).
    Pass the SHA-256 of the bytes the session was built from (``runtime.model.Model.sha256``)."""
    entries = approval_models(spec, where)
    matching = [e for e in entries if e["sha256"] == model_sha256]
    if not matching:
        approved = "; ".join(f"{e['name']} (sha256 {e['sha256'][:16]}…)" for e in entries)
        raise ApprovalError(f"{model_path}: SHA-256 {model_sha256} is not an approved model of {where} (it approves: "
                            f"{approved}). No verdict. Fix: run an approved model file, or approve this one through "
                            "change control (`mscvision compare APPROVED CANDIDATE DATA`, then its entry from "
                            "`mscvision audit approval MODEL`).")
    entry = matching[0]
    problems = metadata_mismatches(entry, embedded_metadata)
    if problems:
        raise ApprovalError(f"{model_path}: its SHA-256 is approved in {where} as {entry['name']!r}, but its embedded "
                            f"metadata differs from that approval record: {'; '.join(problems)}. No verdict: the "
                            "approval record or the file is not what the quality unit approved. Fix: correct the "
                            "record from `mscvision audit approval MODEL` through change control.")
    return entry


def metadata_mismatches(entry: dict, metadata: dict) -> list[str]:
    """How a model's embedded metadata disagrees with its approval entry, one text per field."""
    problems = [f"{key} is {metadata.get(key)!r}, approved {entry[key]!r}" for key in ("name", "precision")
                if metadata.get(key) != entry[key]]
    if "config_hash" in entry:
        actual = (metadata.get("provenance") or {}).get("config_hash")
        if actual != entry["config_hash"]:
            problems.append(f"provenance.config_hash is {actual!r}, approved {entry['config_hash']!r}")
    tasks = {t.get("name"): t for t in metadata.get("tasks", []) if isinstance(t, dict)}
    if set(tasks) != set(entry["tasks"]):
        problems.append(f"tasks are {sorted(tasks)}, approved {sorted(entry['tasks'])}")
    for name in sorted(set(tasks) & set(entry["tasks"])):
        for key, approved in entry["tasks"][name].items():
            actual = list(tasks[name].get(key) or []) if key == "classes" else tasks[name].get(key)
            if actual != approved:
                problems.append(f"task {name} {key} is {actual!r}, approved {approved!r}")
    return problems


# --- detached signatures of files (spec, model) ----------------------------------------------------------

def signature_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sig")


def signed_file_body(sha256: str, name: str) -> str:
    return f"{SIGNED_FILE}\nsha256 {sha256}\nname {name}\n"


def sign_file(path: str | os.PathLike, key, signer: str) -> Path:
    """Write ``FILE.sig``: a signed note stating FILE's SHA-256, signed by ``key`` under the name ``signer``."""
    from mscvision.core.fileio import sha256_file, write_text_atomic

    path = Path(path)
    note = sign_note(signed_file_body(sha256_file(path), path.name), signer, key)
    out = signature_path(path)
    write_text_atomic(out, note)
    return out


def check_file_signature(path: str | os.PathLike, sha256: str, keys, required: bool) -> dict | None:
    """The signature record of ``FILE.sig`` over the file whose bytes hash to ``sha256``: None when there
    is no signature file and none is ``required``; ``ApprovalError`` when one is required and missing,
    is not by one of ``keys``, or states another SHA-256 (the file changed after it was signed)."""
    path, sig = Path(path), signature_path(path)
    if not sig.is_file():
        if required:
            raise ApprovalError(f"{path}: no signature {sig.name}, and this station requires the approver's "
                                "signature. Fix: the quality unit signs it: `mscvision audit sign FILE --key "
                                "APPROVER.key`.")
        return None
    if not keys:
        return {"file": sig.name, "checked": False,
                "note": "a signature file is present but this station has no approver keys to check it with"}
    try:
        body, signatures = parse_note(sig.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SigningError) as exc:
        raise ApprovalError(f"{sig}: not a signature file ({exc})") from None
    if body != signed_file_body(sha256, path.name):
        raise ApprovalError(f"{sig}: it signs another file or another version of {path.name} (it states "
                            f"{body.splitlines()[1:2]}, the file's SHA-256 is {sha256}): the file changed after it "
                            "was signed")
    problems = []
    for key in keys:
        problem = note_problem(body, signatures, key)
        if problem is None:
            signer = next(s.name for s in signatures if s.key_id == key_id(s.name, key))
            return {"file": sig.name, "checked": True, "signer": signer, "key_fingerprint": fingerprint(key)}
        problems.append(problem)
    raise ApprovalError(f"{sig}: not signed by an approver key of this station: {problems[0]}")
