"""Time and peak memory of `mscvision audit verify` on a large audit log (issue 18 acceptance).

    python scripts/audit_log_bench.py --out /tmp/auditbench --records 100000 10000

Builds, for each size, a log of that many records (runs of 1 run record + 499 image records shaped
like a qc run's: path, SHA-256, status, reason, per-class probabilities) with a fresh station key,
through the real append path (lock, fsync, signed checkpoint per run); then runs `mscvision audit
verify LOG --key PUB` in a child process and reports its wall time and peak RSS (the child's
ru_maxrss). A streaming verifier's peak memory does not grow with the log: compare the sizes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

IMAGES_PER_RUN = 499


def build(folder: Path, records: int) -> tuple[Path, Path]:
    from mscvision.core import audit, signing

    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "audit.jsonl"
    if log.exists():
        return log, folder / "keys" / "station.pub"
    private, public = signing.generate_keypair(folder / "keys")
    key = signing.load_private_key(private)
    record = {"station_id": "bench-1", "operator": audit.operator_identity("bench"),
              "model": {"path": "models/msc.onnx", "sha256": "a" * 64}, "spec": {"path": "qc.yaml", "sha256": "b" * 64},
              "versions": audit.software_versions(), "verdicts": [{"unit": "lot", "verdict": "PASS", "reason": "x"}]}
    written = 0
    while written < records:
        n = min(IMAGES_PER_RUN, records - written - 1)
        images = [{"path": f"plate{written // 10000:03d}/well_{i:04d}_field_{written % 97:02d}.tif",
                   "sha256": f"{written + i:064x}", "status": "ok", "reason": "",
                   "result": {"differentiation": {"label": "undifferentiated",
                                                  "p": [0.912345, 0.051234, 0.036421]}}} for i in range(n)]
        written = audit.append_run(log, record, key, images=images).size
    return log, public


def measure(log: Path, public: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mscvision", "audit", "verify", str(log), "--key", str(public),
                           "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    result = json.loads(done.stdout)
    return {"records": result["records"], "bytes": log.stat().st_size, "intact": result["intact"],
            "checkpoints": result["checkpoints"], "seconds": round(seconds, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the logs (reused when present)")
    parser.add_argument("--records", type=int, nargs="+", default=[100_000])
    args = parser.parse_args()
    for n in sorted(args.records):  # smallest first: RUSAGE_CHILDREN's maximum is over all children so far
        log, public = build(args.out / f"log-{n}", n)
        print(json.dumps(measure(log, public)))


if __name__ == "__main__":
    main()
