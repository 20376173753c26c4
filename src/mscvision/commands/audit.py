"""`mscvision audit keygen | verify | show | repair | approval | sign`: the station's audit trail and
model approvals (core/audit.py, core/audit_verify.py, core/approval.py). Bare station install."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mscvision.core.errors import EXIT_AUDIT, EXIT_OK

EPILOG = """exit codes:
  0  done (verify: the log is intact)
  2  usage error: no such log or key, a key of the wrong type or readable by others
  6  the audit log does not verify (edited, deleted, inserted, reordered, rewritten or truncated records, a
     record or checkpoint cut short by a kill, records no checkpoint signs, a checkpoint signed by another
     key), or an append / repair was refused because of it"""


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    keygen = sub.add_parser("keygen", help="make the station's Ed25519 key pair (station.key 0600, station.pub)")
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for station.key and station.pub")
    keygen.set_defaults(audit_handler=run_keygen)

    verify = sub.add_parser("verify", help="check a log's hash chain and signed checkpoints (streaming)",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    verify.add_argument("log", type=Path, metavar="LOG")
    verify.add_argument("--key", type=Path, action="append", metavar="PUB",
                        help="the station's public key (station.pub); without it signatures are checked against "
                             "the key the log itself names, which a rewrite of the whole log could replace")
    verify.add_argument("--checkpoint", type=Path, action="append", metavar="FILE",
                        help="a checkpoint kept elsewhere (a qc run folder's audit-checkpoint.txt): the log must "
                             "still hold what it signed (repeatable)")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(audit_handler=run_verify)

    show = sub.add_parser("show", help="list the runs of a log, or print one run's records")
    show.add_argument("log", type=Path, metavar="LOG")
    show.add_argument("--run", metavar="ID", help="the run to print (the list shows the ids)")
    show.add_argument("--json", action="store_true", help="print the raw records, one JSON object per line")
    show.set_defaults(audit_handler=run_show)

    repair = sub.add_parser("repair", help="after a crash: move unsigned or torn bytes aside and record it")
    repair.add_argument("log", type=Path, metavar="LOG")
    repair.add_argument("--key", type=Path, required=True, metavar="STATION.key", help="the station's private key")
    repair.add_argument("--reason", required=True, help="what happened and who looked (recorded)")
    repair.add_argument("--operator", help=f"who repairs (default: $MSCVISION_OPERATOR); not a signature")
    repair.add_argument("--station", metavar="ID", help="the station id, when the log has no readable first record")
    repair.add_argument("--accept-unsigned", action="store_true",
                        help="keep complete, correctly chained records after the last checkpoint (the repair "
                             "record counts them) instead of moving them aside")
    repair.set_defaults(audit_handler=run_repair)

    approval = sub.add_parser("approval", help="print the QC spec's approval entry for a model")
    approval.add_argument("model", type=Path, metavar="MODEL")
    approval.set_defaults(audit_handler=run_approval)

    sign = sub.add_parser("sign", help="sign a spec or model file: FILE.sig (the approver's key)")
    sign.add_argument("file", type=Path, metavar="FILE")
    sign.add_argument("--key", type=Path, required=True, metavar="APPROVER.key")
    sign.add_argument("--name", default="approver", help="the signer's name in the signature line (one word)")
    sign.set_defaults(audit_handler=run_sign)


def run_audit(args: argparse.Namespace) -> int:
    return args.audit_handler(args)


def run_keygen(args: argparse.Namespace) -> int:
    from mscvision.core.signing import fingerprint, generate_keypair, load_public_key

    private, public = generate_keypair(args.out)
    print(f"wrote {private} (private, mode 0600: keep it on the station) and {public} (public: give it to whoever "
          f"verifies the log)\nfingerprint {fingerprint(load_public_key(public))}")
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    from mscvision.core.audit_verify import read_witness, verify_log
    from mscvision.core.signing import load_public_key

    keys = [load_public_key(k) for k in args.key or []]
    witnesses = tuple(read_witness(c) for c in args.checkpoint or [])
    result = verify_log(args.log, keys, witnesses)
    if args.json:
        print(json.dumps(verification_json(result), indent=2))
    else:
        for line in verification_lines(result):
            print(line)
    return EXIT_OK if result.intact else EXIT_AUDIT


def verification_json(result) -> dict:
    last = result.last_checkpoint
    return {"log": str(result.log), "intact": result.intact, "records": result.records, "runs": result.runs,
            "bytes": result.nbytes, "head": result.head, "station": result.station,
            "key_fingerprint": result.key_fingerprint, "key_pinned": result.pinned, "checkpoints": result.checkpoints,
            "last_checkpoint": None if last is None else {"size": last.size, "time": last.time, "where": last.where},
            "finding": None if result.finding is None else vars(result.finding), "notes": result.notes}


def verification_lines(result) -> list[str]:
    if result.finding is not None:
        f = result.finding
        return [f"NOT INTACT ({f.kind}): {result.log}: {f.message}",
                f"  first bad record: {f.record}" + (f", log line {f.line}" if f.line else ""),
                f"  read before it: {result.records} good records, {result.checkpoints} checkpoints matched"]
    last = result.last_checkpoint
    lines = [f"INTACT: {result.log}: {result.records} records ({result.runs} runs, {result.nbytes} bytes), "
             f"head {result.head[:16]}…"]
    if last is not None:
        lines.append(f"  {result.checkpoints} checkpoints; the last signs all {last.size} records, signed {last.time} "
                     f"by station {result.station} (key {result.key_fingerprint[:16]}…)")
    lines.append("  key pinned by --key" if result.pinned else
                 "  WARNING: no --key: signatures were checked against the key the log itself names; a rewrite of "
                 "the whole log with another key would pass. Pass --key STATION.pub to pin the station's key.")
    return lines + [f"  note: {n}" for n in result.notes]


def run_show(args: argparse.Namespace) -> int:
    from mscvision.core.audit_verify import iter_records, run_records

    records = run_records(args.log, args.run) if args.run else iter_records(args.log)
    if args.json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False, sort_keys=True))
        return EXIT_OK
    if args.run:
        for record in records:
            print(describe_record(record))
    else:
        for record in records:
            if record.get("kind") != "image":
                print(run_line(record))
    print("(as read: `mscvision audit verify LOG --key STATION.pub` says whether the log is intact)", file=sys.stderr)
    return EXIT_OK


def run_line(record: dict) -> str:
    body = record.get("body") or {}
    operator = (body.get("operator") or {}).get("name") or "?"
    if record.get("kind") == "repair":
        return (f"{record.get('seq'):>8}  {record.get('time')}  {record.get('run_id')}  REPAIR by {operator}: "
                f"{body.get('reason')}")
    model = (body.get("model") or {}).get("sha256", "?")[:12]
    summary = body.get("summary") or f"{len(body.get('verdicts') or [])} verdict(s)"
    return (f"{record.get('seq'):>8}  {record.get('time')}  {record.get('run_id')}  operator {operator}  "
            f"model {model}…  {summary}")


def describe_record(record: dict) -> str:
    """One record as a person reads it: the envelope in one line, the body as indented JSON (a run,
    a repair) or as one line (an image)."""
    body = record.get("body") or {}
    head = f"[{record.get('seq')}] {record.get('kind')} {record.get('run_id')} {record.get('time')} " \
           f"station {record.get('station')}"
    if record.get("kind") == "image":
        rest = ", ".join(f"{k}={v}" for k, v in body.items() if k not in ("path", "sha256"))
        return f"  {body.get('path')}  sha256 {str(body.get('sha256'))[:16]}…  {rest}"
    return head + "\n" + json.dumps(body, indent=2, ensure_ascii=False, sort_keys=True)


def run_repair(args: argparse.Namespace) -> int:
    from mscvision.core.audit import operator_identity, repair_log
    from mscvision.core.signing import load_private_key

    key = load_private_key(args.key)
    repaired = repair_log(args.log, key, reason=args.reason, operator=operator_identity(args.operator),
                          station_id=args.station, accept_unsigned=args.accept_unsigned)
    if repaired is None:
        print(f"{args.log}: nothing to repair (the log ends with its last signed record)")
        return EXIT_OK
    for m in repaired.moved:
        print(f"moved {m['bytes']} bytes of {m['file']} (from byte {m['from_byte']}, sha256 {m['sha256'][:16]}…) "
              f"into {m['saved_as']}")
    if repaired.accepted_records:
        print(f"kept {repaired.accepted_records} unsigned records, now signed with the repair")
    print(f"recorded as repair run {repaired.appended.run_id} (record {repaired.appended.first_seq}), new checkpoint "
          f"signs {repaired.appended.size} records")
    return EXIT_OK


def run_approval(args: argparse.Namespace) -> int:
    from mscvision.core.approval import approval_entry
    from mscvision.runtime.model import inspect_model

    metadata, sha256 = inspect_model(args.model)
    print(approval_yaml(approval_entry(sha256, metadata.raw)))
    return EXIT_OK


def approval_yaml(entry: dict) -> str:
    """The entry as YAML for a spec (JSON scalars are YAML scalars, so no YAML library is needed)."""
    lines = ["approval:", "  models:", f"    - sha256: {json.dumps(entry['sha256'])}"]
    for key in ("name", "precision", "config_hash"):
        if key in entry:
            lines.append(f"      {key}: {json.dumps(entry[key])}")
    lines.append("      tasks:")
    for name, task in entry["tasks"].items():
        inner = ", ".join(f"{k}: {json.dumps(v)}" for k, v in task.items())
        lines.append(f"        {json.dumps(name)}: {{{inner}}}")
    lines += ['      change_control: ""   # the change-control record that approved it',
              '      approved_by: ""      # a name, recorded; NOT an electronic signature (sign with `audit sign`)',
              '      approved_on: ""']
    return "\n".join(lines)


def run_sign(args: argparse.Namespace) -> int:
    from mscvision.core.approval import sign_file
    from mscvision.core.signing import fingerprint, load_private_key

    key = load_private_key(args.key)
    out = sign_file(args.file, key, args.name)
    print(f"wrote {out} (signed by {args.name}, key {fingerprint(key.public_key())[:16]}…)")
    return EXIT_OK
