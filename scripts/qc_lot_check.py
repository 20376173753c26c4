"""Judge a synthetic lot with `mscvision qc` and compare every well's verdict with the known truth.

    python scripts/qc_lot_check.py --lot LOT_DIR --model runs/default/model.onnx \
        --spec configs/qc/example.yaml --out OUT_DIR

LOT_DIR is what ``mscvision synth --lot`` writes (images/, layout.csv, truth.csv). The spec is used
as written; if it has no approval entry for the model, a copy with the model's approval (as
``mscvision audit approval`` prints it) is written to OUT_DIR/spec.yaml, so that the real command,
with its start-up check, judges the lot. Printed and written to OUT_DIR/lot_check.json:

- each well's true fraction (in the spec's unit: usable tissue tiles by dominant state, as the
  generator counted them) and the station's estimate, interval and verdict, per fraction criterion;
- the truth of each well: FAIL when some criterion is violated by more than the spec's
  ``evaluation_margin``, PASS when every criterion is met by more than it, borderline otherwise;
- the confusion of verdicts against that truth, false PASS (verdict PASS on a true FAIL), how many
  borderline wells got REVIEW, the interval coverage, and the bias of naive counting vs the
  confusion-adjusted estimate.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lot", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip-run", action="store_true", help="reuse OUT/verdicts.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    spec_path = approved_spec(args.spec, args.model, args.out)
    if not args.skip_run:
        cmd = [sys.executable, "-m", "mscvision.cli", "qc", "--spec", str(spec_path), "--model", str(args.model),
               "--layout", str(args.lot / "layout.csv"), "--out", str(args.out)]
        code = subprocess.run(cmd).returncode
        print(f"mscvision qc exit code {code}")
    doc = json.loads((args.out / "verdicts.json").read_text())
    spec = yaml.safe_load(spec_path.read_text())
    result = compare(doc, read_truth(args.lot / "truth.csv"), spec)
    (args.out / "lot_check.json").write_text(json.dumps(result, indent=1))
    print_result(result)
    return 0


def approved_spec(spec: Path, model: Path, out: Path) -> Path:
    raw = yaml.safe_load(spec.read_text())
    if raw.get("approval"):
        return spec
    printed = subprocess.run([sys.executable, "-m", "mscvision.cli", "audit", "approval", str(model)],
                             capture_output=True, text=True, check=True).stdout
    approval = yaml.safe_load(printed)["approval"]
    for entry in approval["models"]:
        entry.update(change_control="CC-SYNTHETIC-LOT", approved_by="qc_lot_check.py (validation run)")
    raw["approval"] = approval
    if isinstance(raw.get("quantification"), str) and raw["quantification"] != "model":
        raw["quantification"] = str((spec.parent / raw["quantification"]).resolve())
    target = out / "spec.yaml"
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


def read_truth(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["well"]: row for row in csv.DictReader(f)}


def parse_fraction(text: str) -> tuple[str, str, str, float]:
    _, rest = text.split(None, 1)
    target, op, limit = rest.split()
    task, cls = target.split("=")
    return task, cls, op, float(limit)


def compare(doc: dict, truth: dict[str, dict], spec: dict) -> dict:
    margin = float(spec.get("evaluation_margin", 0.0))
    criteria = [parse_fraction(c) for c in spec["criteria"] if c.startswith("fraction")]
    wells, confusion = [], {}
    covered = judged = 0
    naive_err, adjusted_err = [], []
    for well in doc["wells"]:
        t = truth[well["name"]]
        states = []
        entry = {"well": well["name"], "verdict": well["verdict"], "kind": t.get("kind"), "criteria": []}
        for task, cls, op, limit in criteria:
            true = float(t[f"tile.{task}.{cls}"])
            f = well["fractions"].get(task, {}).get(cls) or {}
            est, low, high, naive = (f.get(k) for k in ("estimate", "low", "high", "naive"))
            distance = (true - limit) if op == ">=" else (limit - true)  # > 0: met
            states.append("met" if distance > margin else "violated" if distance < -margin else "borderline")
            if low is not None and high is not None:
                judged += 1
                covered += low <= true <= high
            if est is not None:
                adjusted_err.append(est - true)
            if naive is not None:
                naive_err.append(naive - true)
            entry["criteria"].append({"criterion": f"{task}={cls} {op} {limit}", "true": round(true, 4),
                                      "estimate": est, "low": low, "high": high, "naive": naive})
        expected = "FAIL" if "violated" in states else "PASS" if all(s == "met" for s in states) else "borderline"
        entry["truth"] = expected
        confusion.setdefault(expected, {}).setdefault(well["verdict"], 0)
        confusion[expected][well["verdict"]] += 1
        wells.append(entry)
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"wells": wells, "confusion_truth_vs_verdict": confusion,
            "false_pass": confusion.get("FAIL", {}).get("PASS", 0),
            "borderline_reviewed": f"{confusion.get('borderline', {}).get('REVIEW', 0)}/"
                                   f"{sum(confusion.get('borderline', {}).values())}",
            "coverage": f"{covered}/{judged}", "coverage_fraction": round(covered / judged, 3) if judged else None,
            "bias_naive": mean(naive_err), "bias_adjusted": mean(adjusted_err),
            "mean_abs_error_naive": mean([abs(x) for x in naive_err]),
            "mean_abs_error_adjusted": mean([abs(x) for x in adjusted_err]),
            "lots": {lot["name"]: lot["verdict"] for lot in doc["lots"]}, "margin": margin}


def print_result(r: dict) -> None:
    for w in r["wells"]:
        parts = [f"{c['criterion']}: true {c['true']:.3f} est {_f(c['estimate'])} [{_f(c['low'])}, {_f(c['high'])}]"
                 f" naive {_f(c['naive'])}" for c in w["criteria"]]
        print(f"{w['well']:>5} {w['kind'] or '':<12} truth {w['truth']:<10} verdict {w['verdict']:<6} " + " | ".join(parts))
    print("truth -> verdict counts:", json.dumps(r["confusion_truth_vs_verdict"]))
    print(f"false PASS: {r['false_pass']}; borderline to REVIEW: {r['borderline_reviewed']}; coverage "
          f"{r['coverage']} ({r['coverage_fraction']}); bias naive {r['bias_naive']} vs adjusted {r['bias_adjusted']}; "
          f"mean |error| naive {r['mean_abs_error_naive']} vs adjusted {r['mean_abs_error_adjusted']}; lots {r['lots']}")


def _f(x) -> str:
    return "  -  " if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
