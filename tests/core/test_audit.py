"""The audit trail (issue 18 item 2-3): every kind of tampering is named at its first bad record, a
write cut short by `kill -9` is reported and refused until repaired, two writers interleave whole
runs, keys load with clear errors. Bare station install: stdlib + cryptography, no numpy needed."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mscvision.cli import main
from mscvision.core import audit, signing
from mscvision.core.audit import (AuditTrailBroken, append_run, canonical_json, checkpoints_path, make_record,
                                  repair_log)
from mscvision.core.audit_verify import read_witness, run_records, verify_log

RUNS, IMAGES = 4, 3  # 4 runs of 1 run record + 3 image records: 16 records, one checkpoint per run
PER_RUN = 1 + IMAGES


def run_record(station: str = "line-1", verdict: str = "PASS") -> dict:
    return {"station_id": station, "operator": audit.operator_identity("A. Operator"),
            "model": {"path": "models/msc.onnx", "sha256": "a" * 64}, "spec": {"path": "qc.yaml", "sha256": "b" * 64},
            "versions": {"mscvision": "test"}, "verdicts": [{"unit": "lot-1", "verdict": verdict,
                                                             "reason": "interval inside the limit"}]}


def images(n: int = IMAGES, pad: int = 0) -> list[dict]:
    return [{"path": f"field_{i:03d}.tif", "sha256": f"{i:064x}", "status": "ok", "pad": "x" * pad} for i in range(n)]


@pytest.fixture
def tmp_path(tmp_path):
    """A folder in memory (/dev/shm) where there is one: every append fsyncs two files, which takes up to
    0.3 s on a busy shared disk; what these tests check (chaining, locking, torn tails) is the same
    there, and durability itself is the kernel's. Elsewhere the ordinary pytest folder."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm, prefix="mscvision-audit-test-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    private, public = signing.generate_keypair(folder)
    other_private, other_public = signing.generate_keypair(folder / "other")
    return {"private": private, "public": public, "key": signing.load_private_key(private),
            "pub": signing.load_public_key(public), "other": signing.load_private_key(other_private),
            "other_pub": signing.load_public_key(other_public)}


@pytest.fixture
def log(tmp_path, keys) -> Path:
    path = tmp_path / "audit.jsonl"
    for i in range(RUNS):
        append_run(path, run_record(verdict=("PASS", "REVIEW")[i % 2]), keys["key"], images=images())
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, content: list[bytes]) -> None:
    path.write_bytes(b"".join(content))


def finding(path: Path, keys, **kwargs):
    result = verify_log(path, [keys["pub"]], **kwargs)
    assert not result.intact, "tampering went unnoticed"
    return result.finding


def rechained(records: list[dict], start: int, edit) -> list[bytes]:
    """Records from ``start`` on rewritten by ``edit(record)`` with every hash recomputed: the chain is whole."""
    out, prev = [], records[start - 1]["hash"] if start else audit.GENESIS
    for rec in records[start:]:
        rec = dict(rec)
        edit(rec)
        new = make_record(rec["seq"], prev, rec["kind"], rec["run_id"], rec["time"], rec["station"], rec["key"],
                          rec["body"])
        out.append(canonical_json(new) + b"\n")
        prev = new["hash"]
    return out


def set_verdict(rec: dict) -> None:
    if rec["kind"] == "run":
        rec["body"] = {**rec["body"], "verdicts": [{"unit": "lot-1", "verdict": "PASS", "reason": "changed"}]}
    else:
        rec["body"] = {**rec["body"], "status": "ok-edited"}


# --- an intact log ---------------------------------------------------------------------------------------

def test_an_intact_log_verifies_and_every_record_chains(log, keys):
    result = verify_log(log, [keys["pub"]])
    assert result.intact, result.finding
    assert (result.records, result.runs, result.checkpoints) == (RUNS * PER_RUN, RUNS, RUNS)
    assert result.pinned and result.last_checkpoint.size == RUNS * PER_RUN
    records = [json.loads(line) for line in lines(log)]
    assert [r["seq"] for r in records] == list(range(RUNS * PER_RUN))
    assert all(b["prev"] == a["hash"] for a, b in zip(records, records[1:]))
    assert records[0]["body"]["operator"]["note"].startswith("the name this station was given")
    assert "NOT an electronic signature" in records[0]["body"]["operator"]["note"]


def test_lines_are_canonical_json(log):
    for line in lines(log):
        assert canonical_json(json.loads(line)) + b"\n" == line


def test_a_checkpoint_is_a_signed_note_of_size_bytes_and_head(log, keys):
    last = json.loads(lines(checkpoints_path(log))[-1])["note"]
    body, sigs = signing.parse_note(last)
    origin, size, head, nbytes, when = body.splitlines()
    assert origin.startswith("mscvision.audit/v1/line-1/") and size == str(RUNS * PER_RUN)
    assert base64.b64decode(head).hex() == json.loads(lines(log)[-1])["hash"]
    assert nbytes == f"bytes {log.stat().st_size}" and when.startswith("time ")
    assert signing.note_problem(body, sigs, keys["pub"]) is None
    assert "another key" in signing.note_problem(body, sigs, keys["other_pub"])


# --- each kind of tampering, named at its first bad record -----------------------------------------------

def test_an_edited_record_is_named(log, keys):
    content = lines(log)
    content[5] = content[5].replace(b'"status":"ok"', b'"status":"OK"')
    write_lines(log, content)
    f = finding(log, keys)
    assert (f.kind, f.record, f.line) == ("edited", 5, 6) and "does not match its hash" in f.message


def test_an_edited_record_with_its_hash_recomputed_breaks_the_next_link(log, keys):
    records = [json.loads(line) for line in lines(log)]
    content = lines(log)
    content[5] = rechained(records, 5, set_verdict)[0]  # record 5 alone rewritten, its own hash valid
    write_lines(log, content)
    f = finding(log, keys)
    assert (f.kind, f.record) == ("edited", 5) and "record 5 was rewritten" in f.message


def test_a_reformatted_line_is_an_edited_line(log, keys):
    content = lines(log)
    content[2] = json.dumps(json.loads(content[2]), sort_keys=True).encode() + b"\n"  # spaces after ':' and ','
    write_lines(log, content)
    f = finding(log, keys)
    assert (f.kind, f.record) == ("edited", 2) and "canonical" in f.message


@pytest.mark.parametrize("edit", [(b'"status":"ok"', b'"status":"\\ud800"'), (b'"seq":2', b'"seq":"2"'),
                                  (b'"station":"line-1"', b'"station":7')])
def test_a_line_no_record_of_ours_could_be_is_an_edited_line(log, keys, edit):
    content = lines(log)
    content[2] = content[2].replace(*edit)
    write_lines(log, content)
    f = finding(log, keys)
    assert (f.kind, f.record) == ("edited", 2)


def test_a_deleted_record_is_named(log, keys):
    content = lines(log)
    del content[6]
    write_lines(log, content)
    f = finding(log, keys)
    assert (f.kind, f.record) == ("deleted", 6) and "record 6 is missing" in f.message


def test_an_inserted_copy_is_named(log, keys):
    content = lines(log)
    content.insert(7, content[6])
    write_lines(log, content)
    f = finding(log, keys)
    assert (f.kind, f.record, f.line) == ("inserted", 7, 8) and "a second record 6" in f.message


def test_an_inserted_forged_record_that_chains_is_named(log, keys):
    records = [json.loads(line) for line in lines(log)]
    forged = make_record(6, records[5]["hash"], "image", records[5]["run_id"], records[5]["time"], "line-1",
                         records[5]["key"], {"path": "forged.tif", "sha256": "f" * 64, "status": "ok"})
    content = lines(log)
    content.insert(6, canonical_json(forged) + b"\n")
    write_lines(log, content)
    f = finding(log, keys)
    assert f.kind == "inserted" and "a second record 6" in f.message


def test_reordered_records_are_named(log, keys):
    content = lines(log)
    content[9], content[10] = content[10], content[9]
    write_lines(log, content)
    f = finding(log, keys)
    assert (f.kind, f.record) == ("reordered", 9) and "record 9 is at line 11" in f.message


def test_a_record_moved_far_is_reordered_not_deleted(log, keys):
    content = lines(log)
    content.append(content.pop(3))
    write_lines(log, content)
    f = finding(log, keys)
    assert (f.kind, f.record) == ("reordered", 3)


def test_a_truncated_log_is_caught_by_its_checkpoint(log, keys):
    write_lines(log, lines(log)[:-3])  # whole lines removed: what is left is a perfect chain
    f = finding(log, keys)
    assert (f.kind, f.record) == ("truncated", RUNS * PER_RUN - 3) and "were cut off" in f.message


@pytest.mark.parametrize("k", [1, 3, PER_RUN + 2, RUNS * PER_RUN])
def test_a_full_rewrite_of_the_last_k_records_with_valid_hashes_is_caught_by_the_checkpoint(log, keys, k):
    records = [json.loads(line) for line in lines(log)]
    start = len(records) - k
    write_lines(log, lines(log)[:start] + rechained(records, start, set_verdict))
    f = finding(log, keys)
    assert f.kind == "rewritten", f  # not "edited": every hash and link of the chain is valid
    first_signed_after = (start // PER_RUN) * PER_RUN  # the last checkpoint that still matches ends here
    assert f.record == first_signed_after and f"records {first_signed_after}.." in f.message


def test_a_checkpoint_signed_with_another_key_is_named(log, keys):
    cp_lines = lines(checkpoints_path(log))
    last = audit.read_checkpoint_line(cp_lines[-1], "x")
    forged = audit.checkpoint_note(last.station, last.log_id, last.size, last.head, last.nbytes, last.time,
                                   keys["other"])
    write_lines(checkpoints_path(log), cp_lines[:-1] + [audit.checkpoint_line(forged)])
    f = finding(log, keys)
    assert f.kind == "other-key" and "signed by another key" in f.message and f.record == RUNS * PER_RUN - 1


def test_an_edited_checkpoint_fails_its_signature(log, keys):
    cp_lines = lines(checkpoints_path(log))
    cp_lines[1] = cp_lines[1].replace(b"\\n8\\n", b"\\n9\\n")  # the size line of the second checkpoint
    write_lines(checkpoints_path(log), cp_lines)
    f = finding(log, keys)
    assert f.kind == "checkpoint" and "does not verify" in f.message


def test_a_log_rewritten_whole_with_another_key_passes_only_unpinned(tmp_path, keys):
    forged = tmp_path / "forged.jsonl"
    for _ in range(2):
        append_run(forged, run_record(), keys["other"], images=images())
    f = finding(forged, keys)
    assert (f.kind, f.record) == ("other-key", 0)
    unpinned = verify_log(forged)
    assert unpinned.intact and not unpinned.pinned  # what --key is for: the CLI warns about exactly this


def test_records_after_the_last_checkpoint_are_unsigned(log, keys):
    records = [json.loads(line) for line in lines(log)]
    extra = make_record(len(records), records[-1]["hash"], "image", records[-1]["run_id"], records[-1]["time"],
                        "line-1", records[-1]["key"], {"path": "late.tif", "sha256": None})
    with open(log, "ab") as f:
        f.write(canonical_json(extra) + b"\n")
    f = finding(log, keys)
    assert (f.kind, f.record) == ("unsigned", RUNS * PER_RUN)


def test_a_witness_checkpoint_catches_both_files_cut_back_together(log, keys, tmp_path):
    witness = tmp_path / "audit-checkpoint.txt"
    witness.write_text(json.loads(lines(checkpoints_path(log))[-1])["note"], encoding="utf-8")
    write_lines(log, lines(log)[:-PER_RUN])  # the last run removed from the log ...
    write_lines(checkpoints_path(log), lines(checkpoints_path(log))[:-1])  # ... and its checkpoint
    assert verify_log(log, [keys["pub"]]).intact  # undetectable from the two files alone
    f = verify_log(log, [keys["pub"]], witnesses=(read_witness(witness),)).finding
    assert f is not None and f.kind == "truncated"


# --- a write cut short -------------------------------------------------------------------------------------

SLOW_WRITER = textwrap.dedent("""
    import os, sys, time
    real = os.write
    def slow(fd, data):  # this process's writes trickle out, so a kill lands in the middle of one
        written = real(fd, bytes(data[:2048]))
        time.sleep(0.01)
        return written
    os.write = slow
    from mscvision.core import audit, signing
    record = json.loads(sys.argv[3])
    items = [{"path": f"big_{i:05d}.tif", "sha256": f"{i:064x}", "status": "ok", "pad": "y" * 200} for i in range(3000)]
    audit.append_run(sys.argv[1], record, signing.load_private_key(sys.argv[2]), images=items)
""").replace("import os, sys, time", "import json, os, sys, time")


def test_a_record_cut_short_by_kill_9_is_reported_refused_and_repaired(log, keys, tmp_path):
    before = log.stat().st_size
    signed = log.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(log), str(keys["private"]),
                              json.dumps(run_record())], env=os.environ.copy())
    deadline = time.monotonic() + 120
    while log.stat().st_size < before + 8192:  # the run is being written, 2 KiB at a time
        assert child.poll() is None, "the writer finished or died before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert before < log.stat().st_size < before + 3000 * 300  # cut short, somewhere in the run's one write
    complete = log.read_bytes()[before:].count(b"\n")  # the run's records that were whole when it died
    f = verify_log(log, [keys["pub"]]).finding
    assert (f.kind, f.record, f.line) == ("torn", RUNS * PER_RUN + complete, RUNS * PER_RUN + complete + 1), f
    assert "cut short" in f.message
    size = log.stat().st_size
    with pytest.raises(AuditTrailBroken, match="cut short"):
        append_run(log, run_record(), keys["key"], images=images())
    assert log.stat().st_size == size  # refused: nothing was merged onto the torn tail
    repaired = repair_log(log, keys["key"], reason="station killed during a run; checked by QA",
                          operator=audit.operator_identity("B. Repairer"))
    moved = repaired.moved[0]
    saved = log.with_name(moved["saved_as"])
    assert moved["from_byte"] == before and moved["bytes"] == size - before == saved.stat().st_size
    assert audit.hashlib.sha256(saved.read_bytes()).hexdigest() == moved["sha256"]
    assert log.read_bytes()[:before] == signed  # the signed part is untouched
    result = verify_log(log, [keys["pub"]])
    assert result.intact, result.finding
    last_run = list(run_records(log, repaired.appended.run_id))
    assert last_run[0]["kind"] == "repair" and last_run[0]["body"]["moved"] == repaired.moved
    append_run(log, run_record(), keys["key"], images=images())  # and the station runs on
    assert verify_log(log, [keys["pub"]]).intact


def test_a_torn_checkpoint_and_unsigned_records_are_refused_then_repaired_keeping_them(log, keys):
    records = [json.loads(line) for line in lines(log)]
    extra = make_record(len(records), records[-1]["hash"], "image", records[-1]["run_id"], records[-1]["time"],
                        "line-1", records[-1]["key"], {"path": "late.tif", "sha256": None})
    with open(log, "ab") as f:
        f.write(canonical_json(extra) + b"\n")
    with open(checkpoints_path(log), "ab") as f:
        f.write(b'{"note":"mscvision.audit/v1/li')  # the checkpoint write that was interrupted
    assert verify_log(log, [keys["pub"]]).finding.kind == "torn"
    with pytest.raises(AuditTrailBroken, match="no checkpoint signs"):
        append_run(log, run_record(), keys["key"])
    repaired = repair_log(log, keys["key"], reason="power cut", operator=audit.operator_identity("C"),
                          accept_unsigned=True)
    assert repaired.accepted_records == 1 and [m["file"] for m in repaired.moved] == [checkpoints_path(log).name]
    result = verify_log(log, [keys["pub"]])
    assert result.intact and result.records == len(records) + 2  # the kept record, then the repair record


def test_repair_refuses_tampering_and_has_nothing_to_do_on_an_intact_log(log, keys):
    assert repair_log(log, keys["key"], reason="check", operator={}) is None
    records = [json.loads(line) for line in lines(log)]
    write_lines(log, lines(log)[:-2] + rechained(records, len(records) - 2, set_verdict))
    with pytest.raises(AuditTrailBroken, match="rewritten"):
        repair_log(log, keys["key"], reason="hide it", operator={})
    with pytest.raises(AuditTrailBroken, match="rewritten"):
        append_run(log, run_record(), keys["key"])


def test_an_append_with_another_key_or_station_is_refused(log, keys):
    with pytest.raises(AuditTrailBroken, match="another key"):
        append_run(log, run_record(), keys["other"])
    with pytest.raises(AuditTrailBroken, match="belongs to station 'line-1'"):
        append_run(log, run_record(station="line-2"), keys["key"])


def test_a_bad_record_is_refused_before_anything_is_written(tmp_path, keys):
    path = tmp_path / "audit.jsonl"
    bad = run_record()
    del bad["spec"]
    with pytest.raises(audit.AuditError, match="'spec'"):
        append_run(path, bad, keys["key"])
    with pytest.raises(audit.AuditError, match="NaN"):
        append_run(path, {**run_record(), "verdicts": [{"estimate": float("nan")}]}, keys["key"])
    assert not path.exists() or path.stat().st_size == 0


# --- two writers -------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import json, os, sys, time
    real = os.write
    def slow(fd, data):  # small slow writes: without the lock, two writers' lines would interleave mid-record
        written = real(fd, bytes(data[:512]))
        time.sleep(0.001)
        return written
    os.write = slow
    from mscvision.core import audit, signing
    log, key, go, name = sys.argv[1], signing.load_private_key(sys.argv[2]), sys.argv[3], sys.argv[4]
    while not os.path.exists(go):
        time.sleep(0.001)
    for i in range(12):
        record = {**json.loads(sys.argv[5]), "verdicts": [{"writer": name, "run": i}]}
        audit.append_run(log, record, key, images=[{"path": f"{name}-{i}-{j}.tif", "sha256": None, "pad": "z" * 300}
                                                   for j in range(4)])
""")


def test_two_concurrent_writers_interleave_whole_runs(tmp_path, keys):
    log, go = tmp_path / "audit.jsonl", tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(keys["private"]), str(go), name,
                                  json.dumps(run_record())]) for name in ("A", "B")]
    time.sleep(0.5)
    go.touch()
    assert [c.wait(timeout=300) for c in children] == [0, 0]
    result = verify_log(log, [keys["pub"]])
    assert result.intact, result.finding
    assert (result.runs, result.records, result.checkpoints) == (24, 24 * 5, 24)
    records = [json.loads(line) for line in lines(log)]
    runs = [r["run_id"] for r in records]
    for run_id in set(runs):  # each run's records are contiguous: runs never interleave
        where = [i for i, r in enumerate(runs) if r == run_id]
        assert where == list(range(where[0], where[0] + 5))
    writers = [r["body"]["verdicts"][0]["writer"] for r in records if r["kind"] == "run"]
    assert writers.count("A") == writers.count("B") == 12


# --- keys -----------------------------------------------------------------------------------------------

def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path, capsys):
    assert main(["audit", "keygen", "--out", str(tmp_path / "k")]) == 0
    assert oct((tmp_path / "k" / "station.key").stat().st_mode & 0o777) == "0o600"
    assert "fingerprint" in capsys.readouterr().out
    assert main(["audit", "keygen", "--out", str(tmp_path / "k")]) == 2  # never overwritten
    assert "never overwritten" in capsys.readouterr().err


def test_keys_load_with_clear_errors(tmp_path, keys):
    with pytest.raises(signing.SigningError, match="no such private key file.*keygen"):
        signing.load_private_key(tmp_path / "missing.key")
    loose = tmp_path / "loose.key"
    loose.write_bytes(keys["private"].read_bytes())
    loose.chmod(0o644)
    with pytest.raises(signing.SigningError, match="readable by others.*chmod 600"):
        signing.load_private_key(loose)
    with pytest.raises(signing.SigningError, match="this is a private key"):
        signing.load_public_key(keys["private"])
    with pytest.raises(signing.SigningError, match="this is a public key"):
        own = tmp_path / "pub-as-private.key"
        own.write_bytes(keys["public"].read_bytes())
        own.chmod(0o600)
        signing.load_private_key(own)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "ec.key"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    other.chmod(0o600)
    with pytest.raises(signing.SigningError, match="Ed25519"):
        signing.load_private_key(other)


# --- the commands ---------------------------------------------------------------------------------------

def test_verify_exit_codes_and_show(log, keys, capsys):
    assert main(["audit", "verify", str(log), "--key", str(keys["public"])]) == 0
    assert "INTACT" in capsys.readouterr().out
    assert main(["audit", "verify", str(log)]) == 0
    assert "WARNING: no --key" in capsys.readouterr().out
    assert main(["audit", "verify", str(log.with_name("nope.jsonl"))]) == 2
    capsys.readouterr()
    assert main(["audit", "show", str(log)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == RUNS and "operator A. Operator" in listing[0]
    run_id = listing[1].split()[2]
    assert main(["audit", "show", str(log), "--run", run_id]) == 0
    shown = capsys.readouterr().out
    assert '"verdict": "REVIEW"' in shown and "field_002.tif" in shown and "NOT an electronic signature" in shown
    content = lines(log)
    del content[3]
    write_lines(log, content)
    assert main(["audit", "verify", str(log), "--key", str(keys["public"]), "--json"]) == 6
    doc = json.loads(capsys.readouterr().out)
    assert doc["intact"] is False and doc["finding"]["kind"] == "deleted" and doc["finding"]["record"] == 3
