"""``report.html``: one self-contained page from which a person can judge a model (``mscvision evaluate``).

Plotting needs no extra at all: every figure is inline SVG drawn by ``runtime/svg.py`` and the
thumbnails are PNGs made with Pillow and inlined as base64, so the bare station install renders
every section, and the page opens anywhere without the files beside it. Every text that comes from
the data, the model or the user goes through ``html.escape``.

Sections: provenance, data, then per task a summary with group-bootstrap intervals, the confusion
matrix (counts and row-normalised), per-class precision/recall/F1, the reliability diagram, the
risk-coverage curve with the deployed threshold, coverage and selective accuracy, results per group
(worst first) and the most confident errors. More sections (the OOD gate, Grad-CAM overlays) are
added by passing ``Section``s to ``render_report(..., extra_sections=...)``: see EXTRA SECTIONS below.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mscvision.runtime.svg import BLUE, GREEN, GREY, ORANGE, RED, Axes, esc, heatmap

MAX_GROUP_ROWS = 40  # more groups are in metrics.json; the page shows the worst ones
THUMBNAIL_SIDE = 112  # px: small crops are enlarged (nearest neighbour) so a person can see them


@dataclass(frozen=True)
class Section:
    """One section of the page. ``body`` is trusted markup built by our own code, with every text
    from outside already escaped (``svg.esc``)."""

    id: str
    title: str
    body: str


# --- EXTRA SECTIONS --------------------------------------------------------------------------------
# Other evidence joins the page as ``Section``s passed to ``render_report(..., extra_sections=[...])``:
# they are listed in the contents and placed after the task sections, before the notes. Grad-CAM
# overlays (``gradcam_section`` below, fed by the training install) use this; so can an OOD section.
# ----------------------------------------------------------------------------------------------------


def render_report(metrics: dict, thumbnails: dict[str, str] | None = None,
                  extra_sections: Sequence[Section] = ()) -> str:
    """The whole page from metrics.json (``runtime.evaluate``) and the error thumbnails (path → data URI)."""
    thumbnails = thumbnails or {}
    sections = [provenance_section(metrics), data_section(metrics)]
    for name, task in metrics["tasks"].items():
        sections.append(task_section(name, task, thumbnails))
    sections += list(extra_sections)
    sections.append(notes_section())
    model, data = metrics["model"], metrics["data"]
    title = f"Evaluation of {Path(model['path']).name} on {Path(data['source']).name}"
    contents = "".join(f"<li><a href='#{esc(s.id)}'>{esc(s.title)}</a></li>" for s in sections)
    body = "".join(f"<section id='{esc(s.id)}'><h2>{esc(s.title)}</h2>{s.body}</section>" for s in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>"
            f"<p class='meta'>written {esc(dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'))} by "
            f"mscvision {esc(metrics['versions']['evaluated_with'].get('mscvision'))}; the numbers are in metrics.json "
            f"(schema {esc(metrics['schema'])}), the rows in predictions.csv.</p>"
            f"{summary_table(metrics)}<nav><h2>Contents</h2><ol>{contents}</ol></nav>{body}</body></html>")


def task_id(name: str) -> str:
    """An HTML id for a task's section (task names come from the user)."""
    return "task-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "unnamed")


def summary_table(metrics: dict) -> str:
    rows = []
    for name, t in metrics["tasks"].items():
        m, iv = t["metrics"], (t["intervals"]["intervals"] or {})
        ab, cal = t["abstention"], t["calibration"]
        measured = ab["measured"]
        rows.append(f"<tr><td><a href='#{task_id(name)}'>{esc(name)}</a></td><td>{m['n']}</td>"
                    f"<td>{figure(m['balanced_accuracy'], iv.get('balanced_accuracy'))}</td>"
                    f"<td>{figure(m['macro_f1'], iv.get('macro_f1'))}</td>"
                    f"<td>{number(cal['after']['ece'] if cal['after'] else None)}</td>"
                    f"<td>{number(ab['threshold'])}</td><td>{percent(measured['coverage'])}</td>"
                    f"<td>{number(measured['selective_accuracy'])}</td></tr>")
    return ("<table class='summary'><tr><th>task</th><th>images scored</th><th>balanced accuracy (95% CI)</th>"
            "<th>macro F1 (95% CI)</th><th>ECE</th><th>review threshold</th><th>coverage</th>"
            "<th>selective accuracy</th></tr>" + "".join(rows) + "</table>")


# --- provenance and data ---------------------------------------------------------------------------

def provenance_section(metrics: dict) -> Section:
    model, prov = metrics["model"], metrics.get("provenance") or {}
    versions = metrics["versions"]
    facts = [("model file", model["path"]), ("file SHA-256", model["file_sha256"]),
             ("name / precision", f"{model.get('name')} / {model.get('precision')}"),
             ("created", model.get("created")),
             ("test-time augmentation", model.get("test_time_augmentation") or "none (a single pass per image)"),
             ("config hash", prov.get("config_hash")), ("checkpoint", f"{prov.get('checkpoint')} "
                                                                     f"(SHA-256 {prov.get('checkpoint_sha256')})"),
             ("training data manifest", f"{prov.get('data_manifest')} (SHA-256 {prov.get('data_manifest_sha256')})"),
             ("split.csv SHA-256", prov.get("split_sha256")), ("git commit", prov.get("git_commit") or "unknown"),
             ("exported with", versions_text(versions.get("model_exported_with"))),
             ("evaluated with", versions_text(versions.get("evaluated_with"))),
             ("evaluated on", ", ".join(model.get("providers") or []))]
    tasks = "".join(f"<tr><td>{esc(t['name'])}</td><td>{esc(', '.join(t['classes']))}</td>"
                    f"<td>{t['temperature']:g}</td><td>{t['threshold']:g}</td></tr>" for t in model["tasks"])
    recorded = "".join(f"<tr><td>{esc(task)}</td><td>{number(f.get('balanced_accuracy'))}</td>"
                       f"<td>{number(f.get('macro_f1'))}</td><td>{esc(f.get('n'))}</td></tr>"
                       for task, f in (prov.get("test_metrics") or {}).items())
    card = metrics.get("model_card") or {}
    card_html = "".join(f"<dt>{esc(k.replace('_', ' '))}</dt><dd>{esc(v)}</dd>" for k, v in card.items())
    body = (f"{facts_table(facts)}<h3>Tasks as deployed</h3><table><tr><th>task</th><th>classes (output order)</th>"
            f"<th>temperature</th><th>review below</th></tr>{tasks}</table>"
            f"<h3>Test figures recorded at training ({esc(prov.get('test_metrics_setup') or 'setup not recorded')})"
            "</h3>"
            + (f"<table><tr><th>task</th><th>balanced accuracy</th><th>macro F1</th><th>n</th></tr>{recorded}</table>"
               if recorded else "<p>none recorded in the model.</p>")
            + "<h3>Model card</h3>"
            + (f"<dl>{card_html}</dl>" if card_html else "<p>the model carries no model card.</p>")
            + "<p class='explain'>Everything here is read from the model file itself (its embedded metadata), so it "
              "describes the file whose SHA-256 is shown. Compare that hash with the approved model's before trusting "
              "the rest of the page.</p>")
    return Section("provenance", "Model provenance", body)


def data_section(metrics: dict) -> Section:
    data, rows = metrics["data"], metrics["rows"]
    facts = [("data", data["source"]), ("kind", data["kind"]), ("SHA-256", data.get("sha256") or "(a folder tree)"),
             ("split evaluated", data.get("split") or "every row (no split column)"),
             ("images", data["n_rows"]), ("groups", data["n_groups"]),
             ("label columns", ", ".join(f"{t} ← {c}" for t, c in data["columns"].items())),
             ("rows by status", ", ".join(f"{n} {s}" for s, n in rows.items()))]
    if data.get("relation_to_model"):
        facts.append(("relation to the model", data["relation_to_model"]))
    notes = "".join(f"<li>{esc(n)}</li>" for n in data.get("notes") or [])
    errors = metrics["errors"]
    error_table = ("<h3>Images that could not be evaluated</h3><table><tr><th>path</th><th>reason</th></tr>"
                   + "".join(f"<tr><td>{esc(e['path'])}</td><td>{esc(e['reason'])}</td></tr>" for e in errors[:200])
                   + "</table>"
                   + (f"<p>… and {len(errors) - 200} more (metrics.json)</p>" if len(errors) > 200 else "")
                   ) if errors else "<p>Every image could be read and scored.</p>"
    unknown = "".join(f"<li>{esc(task)}: {t['unknown_labels']['n']} row(s) with labels that are not classes of the "
                      f"model ({esc(', '.join(f'{k} ×{v}' for k, v in t['unknown_labels']['labels'].items()))}); "
                      "they are left out of this task's figures</li>"
                      for task, t in metrics["tasks"].items() if t["unknown_labels"]["n"])
    body = (facts_table(facts) + (f"<ul class='warn'>{notes}</ul>" if notes else "")
            + (f"<h3>Labels the model does not know</h3><ul class='warn'>{unknown}</ul>" if unknown else "")
            + error_table
            + "<p class='explain'>Images are run exactly as a station runs them (the same decoding, checks and "
              "preprocessing); an unreadable image is an error row, counted here and left out of the figures. "
              "Confidence intervals resample whole groups, so they are only as narrow as the number of independent "
              "groups allows.</p>")
    return Section("data", "Data evaluated", body)


# --- one task --------------------------------------------------------------------------------------

def task_section(name: str, task: dict, thumbnails: dict[str, str]) -> Section:
    tid = task_id(name)
    parts = [sub(f"{tid}-summary", "Summary with 95% intervals", summary_block(task)),
             sub(f"{tid}-confusion", "Confusion matrix", confusion_block(task)),
             sub(f"{tid}-per-class", "Per class", per_class_block(task)),
             sub(f"{tid}-reliability", "Reliability (calibration)", reliability_block(task)),
             sub(f"{tid}-risk-coverage", "Risk–coverage and abstention", abstention_block(task)),
             sub(f"{tid}-groups", "Results per group (worst first)", groups_block(task)),
             sub(f"{tid}-errors", "Most confident errors", errors_block(task, thumbnails))]
    return Section(tid, f"Task {name}", "".join(parts))


def sub(id_: str, title: str, body: str) -> str:
    return f"<div class='sub' id='{esc(id_)}'><h3>{esc(title)}</h3>{body}</div>"


def summary_block(task: dict) -> str:
    m, boot = task["metrics"], task["intervals"]
    iv = boot["intervals"] or {}
    rows = "".join(f"<tr><td>{label}</td><td>{figure(m[key], iv.get(key))}</td></tr>" for key, label in
                   (("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"),
                    ("weighted_f1", "weighted F1"), ("accuracy", "accuracy")))
    why = (f"Intervals: {esc(boot['method'])}, {boot['n_boot']} draws of the {boot['n_groups']} groups, seed "
           f"{boot['seed']}." if boot["intervals"] else f"No intervals: {esc(boot['reason'])}.")
    left_out = []
    if task["unknown_labels"]["n"]:
        left_out.append(f"{task['unknown_labels']['n']} with a label the model does not know")
    if task["unlabelled"]:
        left_out.append(f"{task['unlabelled']} with no label for this task")
    if task["not_scored_error_rows"]:
        left_out.append(f"{task['not_scored_error_rows']} that could not be read")
    return (f"<table>{rows}</table><p class='explain'>{m['n']} images scored"
            + (f"; left out: {esc('; '.join(left_out))}" if left_out else "") + f". {why} Balanced accuracy is the "
            "mean recall over the classes present, so a rare class weighs as much as a common one; macro F1 averages "
            "the per-class F1 the same way; weighted F1 weighs each class by its support.</p>")


def confusion_block(task: dict) -> str:
    classes = task["classes"]
    cm = np.asarray(task["metrics"]["confusion_matrix"], dtype=float)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    counts = heatmap((cm / max(cm.max(), 1)).tolist(), [[f"{int(v)}" for v in r] for r in cm], classes, classes,
                     "counts")
    normalised = heatmap(rates.tolist(), [[f"{v:.0%}" for v in r] for r in rates], classes, classes,
                         "row-normalised (recall per true class)")
    return (f"<div class='figs'>{counts}{normalised}</div><p class='explain'>Rows are the true class, columns the "
            "predicted class (the top class, before any review threshold). The diagonal holds the correct calls; on "
            "the right each row sums to 100%, so the diagonal is each class's recall and an off-diagonal cell says "
            "how often that true class is mistaken for that column.</p>")


def per_class_block(task: dict) -> str:
    m, iv = task["metrics"], (task["intervals"]["intervals"] or {})
    rows = []
    for cls in task["classes"]:
        c, ci = m["per_class"][cls], (iv.get("per_class") or {}).get(cls, {})
        cells = [("– (no images of this class)" if f == "recall" and not c["support"] else figure(c[f], ci.get(f)))
                 for f in ("precision", "recall", "f1")]
        rows.append(f"<tr><td>{esc(cls)}</td><td>{c['support']}</td>" + "".join(f"<td>{v}</td>" for v in cells)
                    + "</tr>")
    return ("<table><tr><th>class</th><th>support</th><th>precision (95% CI)</th><th>recall (95% CI)</th>"
            "<th>F1 (95% CI)</th></tr>" + "".join(rows) + "</table><p class='explain'>Precision: of the images "
            "called this class, the share that are; recall: of the images of this class, the share found. A "
            "class's interval is taken over the bootstrap draws in which it is defined (present, or predicted). "
            "A wide interval means few independent groups carry that class: the figure is not yet established.</p>")


def reliability_block(task: dict) -> str:
    cal = task["calibration"]
    if not cal["after"] or not cal["reliability"]["after"]:
        return "<p>No image of this task could be scored.</p>"
    after, before = cal["reliability"]["after"], cal["reliability"]["before"]
    ax = Axes(title="reliability diagram", x_label="confidence (top-class probability)",
              y_label="accuracy in the bin")
    ax.line([0, 1], [0, 1], GREY, "perfect calibration", dashed=True, width=1)
    n = max(sum(b["count"] for b in after), 1)
    ax.bars([b["lower"] for b in after], [b["upper"] for b in after],
            [0.25 * b["count"] / max(max(x["count"] for x in after), 1) for b in after], GREY,
            "share of images (scaled)", opacity=0.35)
    if before:
        ax.line([b["confidence"] for b in before], [b["accuracy"] for b in before], ORANGE,
                "before calibration (temperature 1)", markers=True)
    ax.line([b["confidence"] for b in after], [b["accuracy"] for b in after], BLUE,
            f"as deployed (temperature {cal['temperature']:g})", markers=True)
    recomputed = bool(before)  # else the "before" figures are the training run's, from the provenance
    rows = [("as deployed, this data", cal["after"])]
    if cal["before"]:
        rows.append(("before calibration, " + ("this data" if recomputed else "recorded at training (its test split)"),
                     cal["before"]))
    recorded = cal.get("recorded") or {}
    if recorded.get("after"):
        rows.append(("as deployed, recorded at training (its test split)", recorded["after"]))
    if recorded.get("before") and recomputed:
        rows.append(("before calibration, recorded at training (its test split)", recorded["before"]))
    table = ("<table><tr><th></th><th>ECE (15 bins)</th><th>NLL</th><th>Brier</th><th>n</th></tr>"
             + "".join(f"<tr><td>{label}</td><td>{number(f.get('ece'))}</td><td>{number(f.get('nll'))}</td>"
                       f"<td>{number(f.get('brier'))}</td><td>{esc(f.get('n'))}</td></tr>" for label, f in rows)
             + "</table>")
    same = (" The temperature is 1, so the model is not calibrated: before and after are the same."
            if cal["temperature"] == 1 and cal["before"] else "")
    if cal.get("fitted_on"):
        same += f" The temperature was fitted on {esc(cal['fitted_on'])}."
    return (f"<div class='figs'>{ax.svg()}</div>{table}<p class='explain'>Images are binned by the probability the "
            "model gives its top class; each point is a bin's mean confidence against the share of its images that "
            f"are right. On the dashed diagonal a probability of 0.8 is right 80% of the time; below it the model is "
            f"over-confident. ECE is the image-weighted mean gap, NLL and Brier score the whole probability vector "
            f"(lower is better). Before calibration: {esc(cal['before_source'] or 'not known')}.{same} "
            f"{n} images.</p>")


def abstention_block(task: dict) -> str:
    ab = task["abstention"]
    curve, measured, oracle, station = ab["risk_coverage"], ab["measured"], ab["oracle"], ab["station"]
    low = min([*curve["selective_accuracy"], ab["target_accuracy"], 1.0]) if curve["coverage"] else 0.0
    ax = Axes(y=(max(0.0, np.floor(low * 10) / 10 - 0.05), 1.0), title="risk–coverage",
              x_label="coverage (share of images given a label)", y_label="accuracy of the labelled images")
    ax.line(curve["coverage"], curve["selective_accuracy"], BLUE, "all thresholds on this data")
    ax.hline(ab["target_accuracy"], GREEN, f"target accuracy {ab['target_accuracy']:g}")
    deployed = (f"deployed threshold {ab['threshold']:.3g}" if measured["certified"] else
                "deployed: no certified threshold, every image to review")
    ax.vline(measured["coverage"], RED, f"{deployed} (coverage {percent(measured['coverage'])})")
    if measured["selective_accuracy"] is not None:
        ax.point(measured["coverage"], measured["selective_accuracy"], RED)
    if oracle["coverage"] and oracle["selective_accuracy"] is not None:
        ax.point(oracle["coverage"], oracle["selective_accuracy"], ORANGE, "oracle (chosen on this data)")
    cert = ab["certificate"]
    if cert:
        cert_text = (f"{'certified' if cert.get('certified') else 'NOT certified'}: {cert.get('reason')} "
                     f"(target {cert.get('target_accuracy')}, δ {cert.get('delta')}, {cert.get('n_calibration')} "
                     f"calibration images; on them coverage {percent(cert.get('coverage'))}, selective accuracy "
                     f"{number(cert.get('selective_accuracy'))}, error bound {number(cert.get('risk_bound'))})")
    else:
        cert_text = ("none: the model states no abstention certificate (an older export), so its threshold carries "
                     "no guarantee")
    table = facts_table([
        ("review threshold (deployed)", f"{ab['threshold']:g}"), ("certificate", cert_text),
        ("coverage at the threshold", f"{percent(measured['coverage'])} ({measured['n_labelled']} of {measured['n']})"),
        ("selective accuracy", number(measured["selective_accuracy"])),
        ("labelled by the station's rows", f"{station['labelled']} of {station['n']} "
                                           f"(selective accuracy {number(station['selective_accuracy'])})"),
        (f"oracle coverage at {ab['target_accuracy']:g}", f"{percent(oracle['coverage'])} (threshold "
                                                           f"{number(oracle['threshold'])}, selective accuracy "
                                                           f"{number(oracle['selective_accuracy'])})"),
        *recorded_abstention(ab.get("recorded"))])
    return (f"<div class='figs'>{ax.svg()}</div>{table}<p class='explain'>Below the review threshold the model gives "
            "no label and hands the image to a person. The curve shows, for every possible threshold on this data, "
            "the share of images that would get a label (coverage) against the accuracy of those labels; the red "
            "mark is the deployed threshold. The oracle is the largest coverage whose accuracy on THIS data still "
            f"reaches the target ({esc(ab['target_source'])}); no deployment can know it, so the gap between it and "
            "the deployed coverage is what the guarantee costs. The station's rows also send images to review for "
            "input doubts (e.g. a near-constant image), counted in the station line.</p>")


def recorded_abstention(recorded: dict | None) -> list[tuple[str, str]]:
    """The training run's own figures on its test split (the model's provenance), to compare with."""
    if not recorded:
        return []
    return [("recorded at training (its test split)", f"coverage {percent(recorded.get('coverage'))}, selective "
                                                      f"accuracy {number(recorded.get('selective_accuracy'))}")]


def groups_block(task: dict) -> str:
    groups = task["groups"]
    if not groups:
        return "<p>No image of this task could be scored.</p>"
    rows = "".join(f"<tr><td>{esc(g['group'])}</td><td>{g['n']}</td><td>{g['correct']}</td>"
                   f"<td><span class='bar' style='width:{100 * g['accuracy']:.0f}px'></span> {g['accuracy']:.3f}"
                   "</td></tr>"
                   for g in groups[:MAX_GROUP_ROWS])
    hidden = len(groups) - MAX_GROUP_ROWS
    more = f"<p>… {hidden} more groups in metrics.json.</p>" if hidden > 0 else ""
    return ("<table><tr><th>group</th><th>images</th><th>correct</th><th>accuracy</th></tr>" + rows + "</table>"
            + more + "<p class='explain'>Accuracy of the top-class call per group (well, donor, lot or track), the "
            "worst first. A group far below the rest points at something the model has not learned (a staining, a "
            "plate, a donor); a small group's accuracy is noisy.</p>")


def errors_block(task: dict, thumbnails: dict[str, str]) -> str:
    errors = task["confident_errors"]
    if not errors:
        return "<p>No errors among the scored images.</p>"
    cells = "".join(f"<figure>{image_tag(thumbnails.get(e['path']), e['path'])}<figcaption>true <b>{esc(e['true'])}"
                    f"</b>, called <b>{esc(e['predicted'])}</b><br>p={e['confidence']:.3f} (p true {e['p_true']:.3f})"
                    f"<br><span class='path'>{esc(Path(e['path']).name)} · {esc(e['group'])}</span>"
                    "</figcaption></figure>"
                    for e in errors)
    return (f"<div class='grid'>{cells}</div><p class='explain'>The wrong calls the model was surest of, most "
            "confident first, shown as the model sees them (after its intensity scaling and resizing). Confident "
            "errors are where a threshold does not help: look for a label mistake, an artefact, or a kind of image "
            "the training data lacked.</p>")


def image_tag(uri: str | None, alt: str, width: int = THUMBNAIL_SIDE, height: int | None = THUMBNAIL_SIDE) -> str:
    """An ``<img>`` of ``uri`` (a data URI or a link), or a grey "not shown" box; ``height=None`` keeps the
    image's own aspect ratio."""
    if not uri:
        return "<div class='missing'>(image not shown)</div>"
    size = f"width='{width}'" + (f" height='{height}'" if height is not None else "")
    return f"<img src='{esc(uri)}' alt='{esc(alt)}' {size}>"


def notes_section() -> Section:
    return Section("notes", "How to read this report", (
        "<p class='explain'>All figures are measured on the data named above, with the model file named above, by "
        "the same code a station runs. 95% intervals come from resampling whole groups: images of one well or one "
        "track share their errors, so they do not count as independent evidence. A figure whose interval is wide is "
        "not established by this data. Probabilities are judged by the reliability diagram: a model whose points "
        "fall below the diagonal is more confident than it is right, and its review threshold is then too "
        "permissive unless it was certified on calibration data.</p>"))


# --- thumbnails and overlays ----------------------------------------------------------------------

def error_thumbnails(metrics: dict, metadata) -> dict[str, str]:
    """Data URIs of the confident errors as the model sees them (``prepare_input``, un-standardised)."""
    from mscvision.core.errors import ImageError
    from mscvision.runtime.inputs import prepare_input

    out = {}
    for task in metrics["tasks"].values():
        for e in task["confident_errors"]:
            if e["path"] in out:
                continue
            try:
                out[e["path"]] = png_data_uri(model_view(prepare_input(e["path"], metadata).tensor, metadata.spec))
            except (ImageError, OSError):  # changed since it was scored: the grid says "not shown"
                continue
    return out


def model_view(tensor: np.ndarray, spec) -> np.ndarray:
    """The model's (C, h, w) input → (h, w, C) in [0, 1]: the standardisation undone, nothing else."""
    x = np.asarray(tensor, dtype=np.float32)
    if spec.mean is not None and spec.std is not None:
        x = x * np.asarray(spec.std, np.float32)[:, None, None] + np.asarray(spec.mean, np.float32)[:, None, None]
    return np.clip(x.transpose(1, 2, 0), 0.0, 1.0)


def png_data_uri(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> str:
    """(h, w) or (h, w, C) in [0, 1] → a PNG data URI (3 channels as RGB, otherwise channel 0 as grey)."""
    from PIL import Image

    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3:
        x = x if x.shape[2] == 3 else x[:, :, 0]
    pil = Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8))
    pil = pil.resize((side, side), Image.NEAREST if max(pil.size) < side else Image.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A grey/RGB image in [0, 1] with a heat map (h, w) in [0, 1] blended over it in a jet colour map."""
    x = np.asarray(image, dtype=np.float32)
    grey = x if x.ndim == 2 else (x if x.shape[2] == 3 else x[:, :, :1])
    rgb = np.repeat(grey[:, :, None], 3, axis=2) if grey.ndim == 2 else np.broadcast_to(grey, (*grey.shape[:2], 3))
    h = np.clip(np.asarray(heat, dtype=np.float32), 0, 1)[:, :, None]
    colour = np.clip(1.5 - np.abs(4 * h - np.array([3.0, 2.0, 1.0], np.float32)), 0, 1)
    return (1 - alpha) * rgb + alpha * colour


def gradcam_section(samples: dict[str, list[dict]], note: str) -> Section:
    """Grad-CAM overlays per task: ``samples[task]`` = [{"uri", "true", "predicted", "confidence", "path",
    "correct"}]; ``note`` says how they were computed (checkpoint, layer)."""
    parts = []
    for task, items in samples.items():
        for correct in (True, False):
            chosen = [s for s in items if s["correct"] == correct]
            cells = "".join(f"<figure>{image_tag(s['uri'], s['path'])}<figcaption>true <b>{esc(s['true'])}</b>, called "
                            f"<b>{esc(s['predicted'])}</b> p={s['confidence']:.3f}<br><span class='path'>"
                            f"{esc(Path(s['path']).name)}</span></figcaption></figure>" for s in chosen)
            parts.append(f"<h3>{esc(task)}: {'correct' if correct else 'wrong'} predictions</h3>"
                         + (f"<div class='grid'>{cells}</div>" if cells else "<p>none in this data.</p>"))
    return Section("gradcam", "Grad-CAM: where the model looks", "".join(parts) + (
        f"<p class='explain'>Warm colours mark the image regions whose features raised the score of the predicted "
        f"class most (Grad-CAM, Selvaraju et al. 2017). A model that looks at the cell for correct calls and at the "
        f"background or an artefact for wrong ones is using the wrong evidence. {esc(note)}</p>"))


# --- small formatting helpers ---------------------------------------------------------------------

def facts_table(facts: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    return f"<table class='facts'>{rows}</table>"


def versions_text(versions: dict | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (versions or {}).items()) or "not recorded"


def number(value: object) -> str:
    return "–" if value is None else f"{float(value):.3f}"


def percent(value: object) -> str:
    return "–" if value is None else f"{float(value):.1%}"


def figure(value: float, interval: list[float] | None) -> str:
    return f"{value:.3f}" + (f" <span class='ci'>[{interval[0]:.3f}, {interval[1]:.3f}]</span>" if interval else "")


CSS = """
body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222;line-height:1.35}
h1{font-size:1.5em}h2{border-bottom:2px solid #1f6fb4;padding-bottom:2px;margin-top:1.6em}h3{margin:1em 0 .3em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;
vertical-align:top;font-size:.92em}th{background:#f2f5f9}table.facts th{width:15em}.ci{color:#555;font-size:.9em}
.explain{color:#444;font-size:.9em;max-width:56em}.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:150px;font-size:.8em}
figure img{image-rendering:pixelated;border:1px solid #999}.path{color:#666;word-break:break-all}
.bar{display:inline-block;height:9px;background:#1f6fb4}
.warn{color:#8a4b00}.meta{color:#555;font-size:.9em}.missing{width:112px;height:112px;background:#eee;
font-size:.8em;display:flex;align-items:center;justify-content:center}nav ol{columns:2}
"""
