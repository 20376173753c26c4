"""`mscvision export`: checkpoint → one self-describing ONNX file, gated by parity on real images.

Writes, for ``--out models/NAME.onnx``: ``NAME.onnx`` (fp32, the default model), ``NAME.json`` (its
metadata, readable), ``NAME.parity.json``, ``NAME.vectors/`` (conformance vectors) and, when asked
for and within their gate, ``NAME.fp16.onnx`` / ``NAME.int8.onnx`` with their own json and vectors.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mscvision.core.errors import EXIT_INTERNAL, ConfigError, MscvisionError
from mscvision.core.fileio import sha256_file, write_json_atomic
from mscvision.core.tasks import Task
from mscvision.export import ood, parity
from mscvision.export.graph import OPSET, DeployNet, embed_metadata, export_proto, save_single_file
from mscvision.export.metadata import (build_metadata, conformance, gate_measured_on, model_card, ood_tolerance,
                                      provenance)
from mscvision.export.quantize import INT8_RECIPES, to_fp16, to_int8
from mscvision.export.samples import Samples, load_samples, read_split
from mscvision.export.vectors import write_vectors
from mscvision.core.machine import cpu_flags
from mscvision.runtime.gate import gate_from_block
from mscvision.runtime.metadata import OOD_OUTPUT
from mscvision.training.config import EXPORT_PRECISIONS as PRECISIONS  # one tuple: config checks it too
from mscvision.training.config import OOD_METHODS
from mscvision.training.run_files import RunFiles, load_classifier, locate_run

PARITY_SCHEMA = "mscvision.parity/1"


class ParityError(MscvisionError):
    """The exported fp32 graph does not reproduce the torch model: a toolchain defect, never shipped."""

    exit_code = EXIT_INTERNAL


@dataclass
class _Export:
    """What every step of one export shares: the model, its data and the torch reference."""

    module: object  # MscClassifier
    rows: list[dict]  # split.csv
    heldout: Samples
    deploy: DeployNet
    reference: dict[str, np.ndarray]  # torch probabilities on ``heldout``
    reference_scores: np.ndarray | None  # torch's learned OOD score on ``heldout`` (None: no score head)
    learned: ood.LearnedOod | None
    metadata: dict
    threads: int
    log: object

    @property
    def tasks(self) -> list[Task]:
        return self.module.tasks


def export_run(run_dir_or_ckpt: str | Path, out: str | Path | None = None, precision: str = "fp32", *,
               threads: int = 0, parity_images: int = 1024, calibration_images: int = 256,
               ood_method: str | None = None, log=print) -> Path:
    """Export a trained run; returns the fp32 model's path (the default model, always written).

    ``precision`` fp16 / int8 adds that variant beside it when it meets its parity gate. Raises
    ``ParityError`` (and removes the file) when the fp32 graph fails its gate. ``ood_method``: the
    learned OOD score in the graph (knn / mahalanobis), default the run's ``ood.method``.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: use one of {PRECISIONS}")
    if ood_method is not None and ood_method not in OOD_METHODS:
        raise ConfigError(f"--ood-method {ood_method!r}: use one of {', '.join(OOD_METHODS)}")
    run = locate_run(run_dir_or_ckpt)
    out = Path(out) if out else run.run_dir / "model.onnx"
    if out.suffix != ".onnx":
        raise ConfigError(f"--out {out}: the model file must end in .onnx")
    job = _prepare(run, out.stem, parity_images, threads, ood_method, log)
    report = {"schema": PARITY_SCHEMA, "split": "+".join(job.heldout.splits), "n_images": len(job.heldout),
              "setup": f"{'dihedral x8 TTA inside the graph' if job.deploy.tta else 'plain single pass'}; "
                       "reference: the torch model as evaluated (fp32, CPU)",
              "notes": parity.parity_notes(len(job.heldout)), "gates": {}}
    _export_fp32(job, out, report)
    if precision != "fp32":
        _export_variant(job, out, precision, report, calibration_images)
    return out


def _prepare(run: RunFiles, name: str, parity_images: int, threads: int, ood_method: str | None,
             log) -> _Export:
    module = _load_evaluated_model(run.checkpoint)
    tasks, spec, config = module.tasks, module.config.preprocess, module.config
    rows = read_split(run.run_dir)
    heldout = load_samples(rows, ("test", "val"), tasks, spec, parity.MIN_PARITY_IMAGES, parity_images)
    settings = task_settings(run.run_dir, tasks)
    deploy = DeployNet(module.eval_net, [t.name for t in tasks],
                       [settings[t.name]["temperature"] for t in tasks], tta=config.export.tta)
    learned = ood.fit_learned(deploy, rows, tasks, spec, ood_method or config.ood.method, config.ood.k, log)
    deploy.ood = learned.head if learned else None  # the score head reads the features output
    reference, reference_scores = parity.torch_outputs(deploy, heldout.tensors, tasks)
    metadata = _metadata(name, module, run, rows, heldout, settings, learned)
    log(f"exporting {run.checkpoint} (opset {OPSET})")
    for task, entry in settings.items():
        certificate = entry["abstention"]
        log(f"review threshold {task}: " + (f"p >= {entry['threshold']:.4f} ({certificate.get('reason', '')})"
                                            if certificate.get("certified") else
                                            f"none certified, every image goes to review ({certificate.get('reason', '')})"))
    return _Export(module, rows, heldout, deploy, reference, reference_scores, learned, metadata, threads, log)


def _with_own_calibration(job: _Export, proto, metadata: dict, precision: str) -> dict:
    """``metadata`` with this graph's own scores of the calibration images (a variant's quantised
    features score differently from fp32's: its p-values must come from its own scores) and the
    score's verify tolerance, scaled to them."""
    if job.learned is None:
        return metadata
    scores = ood.graph_scores(proto.SerializeToString(), job.learned.calibration.tensors, job.threads)
    return {**metadata, "ood": ood.with_calibration(metadata["ood"], scores),
            "conformance": {**metadata["conformance"], "ood_max_abs": ood_tolerance(precision, scores)}}


def _export_fp32(job: _Export, out: Path, report: dict) -> None:
    _remove_variants(out)
    proto = export_proto(job.deploy, job.module.config.preprocess)
    job.metadata = _with_own_calibration(job, proto, job.metadata, "fp32")
    gate = gate_from_block(job.metadata.get("ood"))
    for line in gate.never_fire() if gate else []:  # said when the file is made, not first at the station
        job.log(f"warning: OOD gate: {line} (a larger val split would let it)")
    embed_metadata(proto, job.metadata)
    save_single_file(proto, out)
    failures = _measure(job, out, "fp32", report)
    parity_path = out.with_name(out.stem + ".parity.json")
    write_json_atomic(parity_path, report)
    if failures:
        out.unlink()
        raise ParityError(f"the exported graph does not reproduce the torch model ({'; '.join(failures)}); "
                          f"{out} was removed. Figures: {parity_path}")
    failures = _finish(out, job.metadata, job.heldout.paths, job.log)
    if failures:  # fp32 vectors come from the same session: a failure here is a defect, never shipped
        out.unlink()
        raise ParityError(f"{out}: {'; '.join(failures)}")


def _export_variant(job: _Export, out: Path, precision: str, report: dict, n_calibration: int) -> None:
    """fp16 / int8 beside the fp32 model, kept only if it meets its gate. int8 tries each of its
    portable recipes in turn (quantize.INT8_RECIPES) and keeps the first that meets the gate."""
    if precision == "fp16":
        candidates = [lambda: (to_fp16(onnx.load(str(out))), {"method": "float16 weights and activations; "
                                                                        "float32 inputs/outputs, heads and softmax"})]
    else:
        calibration = load_samples(job.rows, ("train",), job.tasks, job.module.config.preprocess,
                                   n_calibration, n_calibration, seed=1)
        candidates = [functools.partial(to_int8, out, calibration.tensors, recipe) for recipe in INT8_RECIPES]
    tried = []
    for build in candidates:
        failures = _try_variant(job, out, precision, *build(), report)
        tried.append({"recipe": report["gates"][precision]["variant"].get("recipe", precision), "failures": failures})
        if not failures:
            break
    report["gates"][precision]["tried"] = tried
    if failures:
        job.log(f"{precision} variant rejected by its gate; {out.name} (fp32) stays the default model")
    write_json_atomic(out.with_name(out.stem + ".parity.json"), report)


def _try_variant(job: _Export, out: Path, precision: str, proto, settings: dict, report: dict) -> list[str]:
    """Write one candidate variant, measure it against its gate; keep it, or remove it and say why."""
    path = out.with_name(f"{out.stem}.{precision}.onnx")
    settings["gate_measured_on"] = gate_measured_on()
    metadata = _with_own_calibration(job, proto, {**job.metadata, "precision": precision, "quantization": settings,
                                                  "conformance": conformance(precision, len(job.heldout))}, precision)
    embed_metadata(proto, metadata)
    save_single_file(proto, path)
    report["gates"][precision] = {"variant": settings}
    failures = _measure(job, path, precision, report) or _finish(path, metadata, job.heldout.paths, job.log)
    if failures:
        gate = report["gates"][precision]
        gate["passed"], gate["failures"] = False, list(dict.fromkeys([*gate["failures"], *failures]))
        job.log(f"{precision} ({settings.get('recipe', precision)}) missed its gate: {'; '.join(failures)}")
        _remove_variants(out, only=precision)
    return failures


def _load_evaluated_model(checkpoint: Path):
    """The weights `evaluate_run` measured: the same checkpoint, loaded the same way."""
    return load_classifier(checkpoint)  # weights only: an exported checkpoint may come from anywhere


UNCALIBRATED = {"certified": False, "reason": "not calibrated: the run has no calibration.json (calibration.enabled "
                                             "false, or no val groups); every image goes to review. Fix: "
                                             "scripts/calibrate.py RUN_DIR, then export again"}


def task_settings(run_dir: Path, tasks: list[Task]) -> dict[str, dict]:
    """Temperature, review threshold and its certificate per task, from the run's ``calibration.json``
    (training/calibrate.py). A run without it (calibration off, no val split, an older run) exports
    temperature 1 and an uncertified certificate (``UNCALIBRATED``): the station reviews every image."""
    fitted = {}
    path = run_dir / "calibration.json"
    if path.is_file():
        fitted = json.loads(path.read_text(encoding="utf-8")).get("tasks", {})
    settings = {}
    for t in tasks:
        entry = fitted.get(t.name, {})
        settings[t.name] = {"temperature": float(entry.get("temperature", 1.0)),
                            "threshold": float(entry.get("threshold", 0.0))}
        # without a certificate the station must not hand out labels as if one had been given
        settings[t.name]["abstention"] = entry.get("abstention", UNCALIBRATED)
        if "quantification" in entry:  # the val confusions a QC station corrects class fractions with
            settings[t.name]["quantification"] = entry["quantification"]
    return settings


def _metadata(name: str, module, run: RunFiles, rows: list[dict], heldout: Samples, settings: dict,
              learned: ood.LearnedOod | None) -> dict:
    config, metrics = module.config, run.metrics
    manifest = metrics.get("run", {}).get("data_manifest")  # what training read, recorded by the run
    n_split = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    meta = build_metadata(name=name, tasks=module.tasks, settings=settings, spec=config.preprocess,
                          max_side=heldout.max_side, bit_depths=heldout.bit_depths,
                          training_side=heldout.median_side or None,
                          provenance=provenance(config, run.run_dir, run.checkpoint, metrics, manifest),
                          card=model_card(config, module.tasks, metrics, n_split, manifest), tta=config.export.tta)
    meta["conformance"] = conformance("fp32", len(heldout))  # the held-out images are the vector candidates
    meta["graph"] = {"opset": OPSET, "exporter": "torch.onnx.export (dynamo)", "export_batch": "dynamic"}
    if learned:
        meta["outputs"]["ood_score"] = learned.settings["output"]
    meta["ood"] = ood.ood_metadata(learned, config.ood.alpha, config.preprocess)
    if learned is None:
        meta["model_card"]["known_limits"] += f" No out-of-distribution gate: {ood.NO_VAL_SPLIT}."
    return meta


def _measure(job: _Export, path: Path, precision: str, report: dict) -> list[str]:
    """Parity of the file at ``path`` against the torch reference, into ``report``; the gate's failures."""
    candidate, scores = parity.onnx_outputs(path, job.heldout.tensors, job.threads)
    figures = parity.parity_figures(job.reference, candidate, job.heldout.targets, job.tasks)
    failures = parity.gate_failures(figures, precision)
    report[precision] = figures
    if job.reference_scores is not None:  # the learned OOD score is gated with the probabilities
        score_figures = parity.ood_figures(job.reference_scores, scores)
        report.setdefault("ood", {})[precision] = score_figures
        failures += parity.ood_gate_failures(score_figures, precision)
        job.log(f"parity {precision:4} {OOD_OUTPUT}: max|Δ| {score_figures['max_abs_diff']:.2e}, rank correlation "
                f"{score_figures['rank_correlation']:.4f}")
    extra = {"cpu_flags": cpu_flags()} if precision == "int8" else {}
    report["gates"][precision] = {**parity.gate_entry(precision, failures, extra, ood=job.learned is not None),
                                  **report["gates"].get(precision, {})}
    for task, f in figures.items():
        job.log(f"parity {precision:4} {task}: max|Δp| {f['max_abs_diff']:.2e}, top-1 agreement "
                f"{f['top1_agreement']:.2%} ({f['changed_predictions']} changed of {f['n_images']}), "
                f"balanced accuracy {100 * f['balanced_accuracy_delta']:+.2f} points")
    for failure in failures:
        job.log(f"parity {precision} gate missed: {failure}")
    return failures


def _remove_variants(out: Path, only: str | None = None) -> None:
    """Variants of an earlier export under this name would not match the new fp32 model (``only``:
    one rejected variant's files)."""
    import shutil

    for precision in [only] if only else PRECISIONS[1:]:
        stem = f"{out.stem}.{precision}"
        for file in (out.with_name(stem + ".onnx"), out.with_name(stem + ".json")):
            file.unlink(missing_ok=True)
        shutil.rmtree(out.with_name(stem + ".vectors"), ignore_errors=True)


def _finish(path: Path, metadata: dict, candidates: list[str], log) -> list[str]:
    """The readable metadata copy (with the file's hash) and the conformance vectors; returns why this
    machine's own runtime would fail `verify` on them (int8: fused kernels vs the graph's arithmetic)."""
    file_info = {"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    write_json_atomic(path.with_suffix(".json"), {**metadata, "file": file_info})
    vectors = path.with_name(path.stem + ".vectors")
    check = write_vectors(path, vectors, candidates)
    log(f"wrote {path} ({file_info['bytes'] / 1e6:.2f} MB, sha256 {file_info['sha256'][:12]}…), "
        f"{path.with_suffix('.json').name}, {vectors.name}/ ({check['n_cases']} vectors, this machine "
        f"max|Δp| {check['probability_max_abs']:.1e}, verify {'PASS' if check['passed'] else 'FAIL'})")
    return [f"conformance on this machine: {f}" for f in check["failures"]]
