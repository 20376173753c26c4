"""Approved models only (issue 18 item 1): the spec pins each approved model's SHA-256 and restates its
metadata; any other file, or one whose metadata differs from its approval record, is refused with no
verdict; signatures over spec and model are checked at start-up; the start-up self-check runs the
conformance vectors and refuses to judge when they fail. Bare station install."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from mscvision.cli import main
from mscvision.core import signing
from mscvision.core.approval import (ApprovalError, approval_entry, approval_models, check_approved,
                                     check_file_signature, sign_file)
from mscvision.core.errors import ConfigError
from mscvision.core.fileio import sha256_file
from mscvision.runtime.startup import StationRefused, station_startup
from mscvision.runtime.verify import default_vectors_dir
from runtime_fixtures import FIXTURE
from test_model_checks import RAW, with_metadata

FIXTURE_SHA = sha256_file(FIXTURE)


def spec_for(*entries: dict) -> dict:
    return {"criteria": [], "approval": {"models": list(entries)}}


@pytest.fixture
def approved_spec(tmp_path):
    spec = spec_for({**approval_entry(FIXTURE_SHA, RAW), "change_control": "CC-1"})
    path = tmp_path / "qc.yaml"
    path.write_text(json.dumps(spec), encoding="utf-8")  # JSON is YAML; the parsed spec is what counts here
    return spec, path


@pytest.fixture(scope="module")
def approver(tmp_path_factory):
    folder = tmp_path_factory.mktemp("approver")
    private, public = signing.generate_keypair(folder)
    other, other_public = signing.generate_keypair(folder / "other")
    return {"key": signing.load_private_key(private), "pub": signing.load_public_key(public),
            "other": signing.load_private_key(other), "private": private, "public": public}


def test_the_approved_model_passes(approved_spec):
    spec, _ = approved_spec
    entry = check_approved(FIXTURE, FIXTURE_SHA, RAW, spec)
    assert entry["change_control"] == "CC-1" and entry["sha256"] == FIXTURE_SHA


def test_any_other_model_is_refused(approved_spec, tmp_path):
    spec, _ = approved_spec
    altered = copy.deepcopy(RAW)
    altered["tasks"][1]["threshold"] = 0.9  # one number in the metadata: another file, another hash
    path = with_metadata(altered, tmp_path / "altered.onnx")
    with pytest.raises(ApprovalError, match="is not an approved model.*No verdict"):
        check_approved(path, sha256_file(path), altered, spec)


def test_a_model_whose_metadata_differs_from_its_approval_record_is_refused(tmp_path):
    altered = copy.deepcopy(RAW)
    altered["tasks"][1]["threshold"] = 0.9
    altered["precision"] = "int8"
    path = with_metadata(altered, tmp_path / "altered.onnx")
    # the approval record carries the altered file's hash but the approved model's metadata: a pasted hash
    spec = spec_for(approval_entry(sha256_file(path), RAW))
    with pytest.raises(ApprovalError) as caught:
        check_approved(path, sha256_file(path), altered, spec)
    message = str(caught.value)
    assert "embedded metadata differs" in message and "precision is 'int8', approved 'fp32'" in message
    assert "task count threshold is 0.9, approved 0.0" in message


def test_classes_and_config_hash_are_checked():
    entry = approval_entry(FIXTURE_SHA, RAW)
    entry["tasks"]["shape"]["classes"] = ["disc", "bar"]
    entry["config_hash"] = "0" * 16
    with pytest.raises(ApprovalError) as caught:
        check_approved(FIXTURE, FIXTURE_SHA, RAW, spec_for(entry))
    message = str(caught.value)
    assert "task shape classes is ['bar', 'disc'], approved ['disc', 'bar']" in message
    assert f"provenance.config_hash is {RAW['provenance']['config_hash']!r}, approved '{'0' * 16}'" in message


@pytest.mark.parametrize("section, key", [
    ({"models": [{"sha256": FIXTURE_SHA, "name": "x", "precision": "fp32", "tasks": {"t": {"classes": []}},
                  "aproved_by": "typo"}]}, "aproved_by"),
    ({"models": [{"sha256": "abc", "name": "x", "precision": "fp32", "tasks": {"t": {"classes": []}}}]}, "sha256"),
    ({"models": [{"sha256": FIXTURE_SHA, "precision": "fp32", "tasks": {"t": {"classes": []}}}]}, "name"),
    ({"model": []}, "approval.model"),
])
def test_a_malformed_approval_section_names_the_key(section, key):
    with pytest.raises(ConfigError, match=key.replace(".", "\\.")):
        approval_models({"approval": section})


def test_a_spec_without_approval_approves_nothing():
    with pytest.raises(ApprovalError, match="no 'approval' section"):
        check_approved(FIXTURE, FIXTURE_SHA, RAW, {"criteria": []})


# --- signatures ----------------------------------------------------------------------------------------

def test_a_signed_spec_verifies_and_a_changed_or_foreign_one_is_refused(approved_spec, approver, tmp_path):
    _, path = approved_spec
    sign_file(path, approver["key"], "qa-lead")
    record = check_file_signature(path, sha256_file(path), [approver["pub"]], required=True)
    assert record["checked"] and record["signer"] == "qa-lead"
    path.write_text(path.read_text() + "\n", encoding="utf-8")  # edited after signing
    with pytest.raises(ApprovalError, match="changed after it was signed"):
        check_file_signature(path, sha256_file(path), [approver["pub"]], required=True)
    sign_file(path, approver["other"], "someone")
    with pytest.raises(ApprovalError, match="not signed by an approver key"):
        check_file_signature(path, sha256_file(path), [approver["pub"]], required=True)
    unsigned = tmp_path / "unsigned.yaml"
    unsigned.write_text("{}")
    with pytest.raises(ApprovalError, match="requires the approver's signature"):
        check_file_signature(unsigned, sha256_file(unsigned), [approver["pub"]], required=True)
    assert check_file_signature(unsigned, sha256_file(unsigned), [], required=False) is None


# --- the start-up self-check ---------------------------------------------------------------------------

def test_startup_passes_for_the_approved_model_and_gives_the_audit_fields(approved_spec, approver, tmp_path):
    spec, path = approved_spec
    model_copy = tmp_path / "model.onnx"
    shutil.copy(FIXTURE, model_copy)
    shutil.copytree(default_vectors_dir(FIXTURE), default_vectors_dir(model_copy))
    sign_file(path, approver["key"], "qa")
    sign_file(model_copy, approver["key"], "qa")
    check = station_startup(model_copy, spec, path, approver_keys=[approver["pub"]], threads=1)
    fields = check.audit_fields(path)
    assert fields["model"]["sha256"] == FIXTURE_SHA and fields["spec"]["sha256"] == sha256_file(path)
    assert fields["model"]["conformance"]["passed"] and fields["model"]["conformance"]["cases"] > 0
    assert fields["spec"]["signature"]["checked"] and fields["model"]["signature"]["checked"]
    assert fields["model"]["approval"]["change_control"] == "CC-1"


def test_startup_refuses_an_unapproved_model_before_judging(approved_spec, tmp_path):
    spec, path = approved_spec
    altered = copy.deepcopy(RAW)
    altered["tasks"][0]["temperature"] = 2.0
    model = with_metadata(altered, tmp_path / "altered.onnx")
    with pytest.raises(ApprovalError, match="not an approved model"):
        station_startup(model, spec, path, threads=1)


def test_startup_refuses_to_judge_when_the_conformance_vectors_fail(approved_spec, tmp_path):
    spec, path = approved_spec
    vectors = tmp_path / "vectors"
    shutil.copytree(default_vectors_dir(FIXTURE), vectors)
    doc = json.loads((vectors / "vectors.json").read_text())
    case = doc["cases"][0]
    case["probabilities"] = {task: list(reversed(p)) for task, p in case["probabilities"].items()}
    (vectors / "vectors.json").write_text(json.dumps(doc))
    with pytest.raises(StationRefused, match="self-check against its conformance vectors .* failed.*No lot is judged"):
        station_startup(FIXTURE, spec, path, vectors=vectors, threads=1)


def test_startup_requires_the_spec_signature_when_the_station_has_approver_keys(approved_spec, approver):
    spec, path = approved_spec
    with pytest.raises(ApprovalError, match="requires the approver's signature"):
        station_startup(FIXTURE, spec, path, approver_keys=[approver["pub"]], threads=1)


# --- the commands ---------------------------------------------------------------------------------------

def test_audit_approval_prints_an_entry_that_approves_the_model(capsys):
    yaml = pytest.importorskip("yaml")  # the station install has no YAML reader; the printed text is the point
    assert main(["audit", "approval", str(FIXTURE)]) == 0
    spec = yaml.safe_load(capsys.readouterr().out)
    entry = check_approved(FIXTURE, FIXTURE_SHA, RAW, spec)
    assert entry["name"] == RAW["name"] and entry["tasks"]["shape"]["classes"] == ["bar", "disc"]


def test_audit_sign_writes_a_signature_the_station_accepts(approved_spec, approver, capsys):
    _, path = approved_spec
    assert main(["audit", "sign", str(path), "--key", str(approver["private"]), "--name", "qa"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert check_file_signature(path, sha256_file(path), [approver["pub"]], required=True)["checked"]
