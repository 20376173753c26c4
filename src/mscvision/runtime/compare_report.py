"""``report.html`` of ``mscvision compare``: the approved model and the candidate side by side, on one
self-contained page (inline SVG from ``runtime/svg.py``, thumbnails via Pillow; the bare station
install renders it). Every text from the data, the models or the user goes through ``svg.esc``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from mscvision.runtime.report import (CSS, Section, facts_table, figure, image_tag, model_view, number, percent,
                                      png_data_uri)
from mscvision.runtime.svg import BLUE, GREY, RED, esc, heatmap

FIGURES = (("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"), ("weighted_f1", "weighted F1"),
           ("accuracy", "accuracy"))
MAX_CHANGED_ROWS = 300
MAX_THUMBNAILS = 24


def render_comparison(doc: dict, changed: list[dict], thumbnails: dict[str, str] | None = None) -> str:
    thumbnails = thumbnails or {}
    a, b = doc["approved"], doc["candidate"]
    sections = [models_section(a, b, doc.get("notes") or []), data_section(a, b)]
    sections += [task_section(name, task, a["tasks"][name], b["tasks"][name], changed, thumbnails)
                 for name, task in doc["tasks"].items()]
    sections += [lot_section(doc["lot_verdicts"]), notes_section()]
    title = f"Candidate {Path(b['model']['path']).name} vs approved {Path(a['model']['path']).name}"
    contents = "".join(f"<li><a href='#{esc(s.id)}'>{esc(s.title)}</a></li>" for s in sections)
    body = "".join(f"<section id='{esc(s.id)}'><h2>{esc(s.title)}</h2>{s.body}</section>" for s in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}{EXTRA_CSS}</style></head><body><h1>{esc(title)}</h1>"
            f"<p class='meta'>on {esc(Path(a['data']['source']).name)} · written "
            f"{esc(dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'))} by mscvision "
            f"{esc(a['versions']['evaluated_with'].get('mscvision'))}; the numbers are in comparison.json (schema "
            f"{esc(doc['schema'])}), the changed decisions in decisions_changed.csv"
            f"{'' if doc['lot_verdicts'].get('changes') is None else ', the changed verdicts in verdicts_changed.csv'}"
            ".</p>"
            f"{headline_table(doc)}<nav><h2>Contents</h2><ol>{contents}</ol></nav>{body}</body></html>")


def headline_table(doc: dict) -> str:
    rows = []
    for name, task in doc["tasks"].items():
        a, b = doc["approved"]["tasks"][name], doc["candidate"]["tasks"][name]
        paired = task["paired"]
        for key, label in FIGURES[:2]:
            rows.append(f"<tr><td>{esc(name)}</td><td>{label}</td>"
                        f"<td>{figure(a['metrics'][key], (a['intervals']['intervals'] or {}).get(key))}</td>"
                        f"<td>{figure(b['metrics'][key], (b['intervals']['intervals'] or {}).get(key))}</td>"
                        f"<td>{difference(paired['difference'][key], (paired['intervals'] or {}).get(key))}</td>"
                        f"<td>{percent((paired['b_better'] or {}).get(key))}</td></tr>")
        rows.append(f"<tr><td>{esc(name)}</td><td>decisions changed</td><td colspan='4'>{task['decisions']['n']} of "
                    f"{paired['n_images']} scored images ({esc(kinds_text(task['decisions']['by_kind']))})</td></tr>")
    lot = doc["lot_verdicts"]
    if lot.get("changes") is not None:
        rows.append(f"<tr><td>reference lot</td><td>verdicts changed</td><td colspan='4'>{lot['n_changed']} of "
                    f"{len(lot['units'])} wells / lots (<a href='#lot'>see below</a>)</td></tr>")
    return ("<table class='summary'><tr><th>task</th><th>figure</th><th>approved (95% CI)</th>"
            "<th>candidate (95% CI)</th><th>candidate − approved (paired 95% CI)</th><th>draws candidate better</th>"
            "</tr>" + "".join(rows) + "</table>")


def kinds_text(by_kind: dict) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items(), key=lambda kv: -kv[1])) or "none"


def difference(value: float, interval: list[float] | None) -> str:
    if interval is None:
        return f"{value:+.3f} <span class='ci'>(no interval)</span>"
    verdict = ("better" if interval[0] > 0 else "worse" if interval[1] < 0 else "no clear change")
    css = {"better": "better", "worse": "worse"}.get(verdict, "same")
    return (f"<span class='{css}'>{value:+.3f}</span> <span class='ci'>[{interval[0]:+.3f}, {interval[1]:+.3f}]"
            f"</span> <span class='{css}'>{verdict}</span>")


# --- models and data ---------------------------------------------------------------------------------

def models_section(a: dict, b: dict, notes: list[str]) -> Section:
    def facts(m: dict) -> list[tuple[str, object]]:
        model, prov = m["model"], m.get("provenance") or {}
        return [("file", model["path"]), ("SHA-256", model["file_sha256"]), ("name", model.get("name")),
                ("precision", model.get("precision")), ("created", model.get("created")),
                ("test-time augmentation", model.get("test_time_augmentation") or "none"),
                ("config hash", prov.get("config_hash")), ("git commit", prov.get("git_commit") or "unknown"),
                ("training data", f"{prov.get('data_manifest')} (SHA-256 {prov.get('data_manifest_sha256')})"),
                *[(f"task {t['name']}", f"classes {', '.join(t['classes'])}; temperature {t['temperature']:g}; review "
                                        f"below {t['threshold']:g}") for t in model["tasks"]]]

    fa, fb = facts(a), facts(b)
    keys = list(dict.fromkeys([k for k, _ in fa] + [k for k, _ in fb]))
    da, db = dict(fa), dict(fb)
    rows = "".join(f"<tr{' class=diff' if da.get(k) != db.get(k) else ''}><th>{esc(k)}</th><td>{esc(da.get(k, '–'))}"
                   f"</td><td>{esc(db.get(k, '–'))}</td></tr>" for k in keys)
    warn = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return Section("models", "The two models", (
        f"<table class='facts'><tr><th></th><th>approved</th><th>candidate</th></tr>{rows}</table>"
        + (f"<ul class='warn'>{warn}</ul>" if warn else "")
        + "<p class='explain'>Read from each file's embedded metadata; rows that differ are highlighted. The SHA-256 "
          "is what a QC spec's approval record pins: approving the candidate means adding its entry (`mscvision "
          "audit approval CANDIDATE`) through change control.</p>"))


def data_section(a: dict, b: dict) -> Section:
    data = a["data"]
    facts = [("data", data["source"]), ("SHA-256", data.get("sha256") or "(a folder tree)"),
             ("split", data.get("split") or "every row"), ("images", data["n_rows"]), ("groups", data["n_groups"]),
             ("approved: rows by status", ", ".join(f"{n} {s}" for s, n in a["rows"].items())),
             ("candidate: rows by status", ", ".join(f"{n} {s}" for s, n in b["rows"].items()))]
    for side, m in (("approved", a), ("candidate", b)):
        if m["data"].get("relation_to_model"):
            facts.append((f"relation to the {side} model", m["data"]["relation_to_model"]))
    notes = "".join(f"<li>{esc(n)}</li>" for n in data.get("notes") or [])
    return Section("data", "Data both were run on", facts_table(facts) + (
        f"<ul class='warn'>{notes}</ul>" if notes else "") + (
        "<p class='explain'>Both models read the same files through the station's own code, each with its own "
        "preprocessing. Data either model trained on makes its figures optimistic (see the relation rows).</p>"))


# --- one task -------------------------------------------------------------------------------------------

def task_section(name: str, task: dict, a: dict, b: dict, changed: list[dict], thumbnails: dict[str, str]) -> Section:
    tid = "task-" + "".join(c if c.isalnum() else "-" for c in name)
    parts = [("Paired difference", difference_block(task["paired"])),
             ("Per class", per_class_block(task, a, b)),
             ("Confusion matrices", confusion_block(task["classes"], a, b)),
             ("Abstention at each model's threshold", abstention_block(a, b)),
             ("Decisions that changed", changed_block(task, [c for c in changed if c["task"] == name], thumbnails))]
    body = "".join(f"<div class='sub' id='{esc(tid)}-{i}'><h3>{esc(title)}</h3>{html}</div>"
                   for i, (title, html) in enumerate(parts))
    return Section(tid, f"Task {name}", body)


def difference_block(paired: dict) -> str:
    iv = paired["intervals"] or {}
    rows = "".join(f"<tr><td>{label}</td><td>{difference(paired['difference'][key], iv.get(key))}</td>"
                   f"<td>{percent((paired['b_better'] or {}).get(key))}</td></tr>" for key, label in FIGURES)
    chart = forest_plot([(label, paired["difference"][key], iv.get(key)) for key, label in FIGURES])
    why = (f"{esc(paired['method'])}; {paired['n_boot']} draws of the {paired['n_groups']} groups, seed {paired['seed']}"
           if paired["intervals"] else f"no interval: {esc(paired['reason'])}")
    only = ""
    if paired["n_approved_only"] or paired["n_candidate_only"]:
        only = (f" Left out of the pairing: {paired['n_approved_only']} image(s) only the approved model scored, "
                f"{paired['n_candidate_only']} only the candidate scored.")
    return (f"<div class='figs'>{chart}</div><table><tr><th>figure</th><th>candidate − approved (95% CI)</th>"
            f"<th>draws candidate better</th></tr>{rows}</table><p class='explain'>{paired['n_images']} images both "
            f"models scored; the top class differs on {paired['top_class_changed']}. {why}.{only} A difference whose "
            "interval holds 0 is not shown by this data; one wholly above 0 is an improvement, wholly below a "
            "regression.</p>")


def forest_plot(items: list[tuple[str, float, list[float] | None]]) -> str:
    """The differences with their intervals, one row each, against the zero line (blue: wholly above 0,
    red: wholly below, grey: the interval holds 0)."""
    bounds = [abs(v) for _, d, iv in items for v in ([d] + (iv or []))]
    span = max(0.05, max(bounds, default=0.05) * 1.15)
    left, width, row, top = 130, 300, 26, 26
    height = top + row * len(items) + 34

    def x(value: float) -> float:
        return left + (value + span) / (2 * span) * width

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{left + width + 20}' height='{height}' role='img' "
             "aria-label='paired differences'><rect width='100%' height='100%' fill='white'/>",
             f"<text x='{left + width / 2}' y='15' text-anchor='middle' font-family='sans-serif' font-size='13' "
             "font-weight='bold'>candidate − approved</text>"]
    for tick in (-span, -span / 2, 0.0, span / 2, span):
        style = "stroke='#555' stroke-dasharray='4 3'" if tick == 0 else "stroke='#eee'"
        parts += [f"<line x1='{x(tick):.1f}' y1='{top}' x2='{x(tick):.1f}' y2='{top + row * len(items)}' {style}/>",
                  f"<text x='{x(tick):.1f}' y='{top + row * len(items) + 14}' text-anchor='middle' "
                  f"font-family='sans-serif' font-size='11'>{tick:+.2f}</text>"]
    for k, (label, value, interval) in enumerate(items):
        y = top + row * k + row / 2
        colour = BLUE if interval and interval[0] > 0 else RED if interval and interval[1] < 0 else GREY
        parts.append(f"<text x='{left - 8}' y='{y + 4:.0f}' text-anchor='end' font-family='sans-serif' "
                     f"font-size='11'>{esc(label)}</text>")
        if interval:
            parts.append(f"<line x1='{x(interval[0]):.1f}' y1='{y:.0f}' x2='{x(interval[1]):.1f}' y2='{y:.0f}' "
                         f"stroke='{colour}' stroke-width='3'/>")
        parts.append(f"<circle cx='{x(value):.1f}' cy='{y:.0f}' r='5' fill='{colour}' stroke='white'/>")
    parts.append(f"<text x='{left + width / 2}' y='{height - 4}' text-anchor='middle' font-family='sans-serif' "
                 "font-size='11'>difference, paired 95% interval</text></svg>")
    return "".join(parts)


def per_class_block(task: dict, a: dict, b: dict) -> str:
    pa, pb = a["metrics"]["per_class"], b["metrics"]["per_class"]
    iv = ((task["paired"]["intervals"] or {}).get("per_class") or {})
    diff = task["paired"]["difference"]["per_class"]
    rows = []
    for cls in task["classes"]:
        ci = iv.get(cls, {})
        rows.append(f"<tr><td>{esc(cls)}</td><td>{pa[cls]['support']}</td>"
                    f"<td>{number(pa[cls]['recall'])}</td><td>{number(pb[cls]['recall'])}</td>"
                    f"<td>{difference(diff[cls]['recall'], ci.get('recall'))}</td>"
                    f"<td>{number(pa[cls]['f1'])}</td><td>{number(pb[cls]['f1'])}</td>"
                    f"<td>{difference(diff[cls]['f1'], ci.get('f1'))}</td></tr>")
    return ("<table><tr><th>class</th><th>support</th><th>recall approved</th><th>recall candidate</th>"
            "<th>Δ recall (paired 95% CI)</th><th>F1 approved</th><th>F1 candidate</th><th>Δ F1 (paired 95% CI)</th>"
            "</tr>" + "".join(rows) + "</table><p class='explain'>Figures of each model on all the images it scored; "
            "the differences and their intervals are over the images both scored. A class carried by few groups has a "
            "wide interval: its change is not established.</p>")


def confusion_block(classes: list[str], a: dict, b: dict) -> str:
    def reordered(m: dict) -> np.ndarray:
        order = [m["classes"].index(c) for c in classes]
        return np.asarray(m["metrics"]["confusion_matrix"], dtype=float)[np.ix_(order, order)]

    figs = []
    for side, m in (("approved", a), ("candidate", b)):
        cm = reordered(m)
        rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        figs.append(heatmap(rates.tolist(), [[f"{int(c)}" for c in r] for r in cm], classes, classes,
                            f"{side} (counts; shade: row share)"))
    return (f"<div class='figs'>{''.join(figs)}</div><p class='explain'>Rows true, columns the top class (before "
            "any review threshold), in the approved model's class order for both.</p>")


def abstention_block(a: dict, b: dict) -> str:
    def cells(m: dict) -> str:
        ab = m["abstention"]
        measured = ab["measured"]
        certificate = ab["certificate"]
        certified = "none stated" if not certificate else "yes" if certificate.get("certified") else "NO"
        return (f"<td>{number(ab['threshold'])}</td><td>{certified}</td><td>{percent(measured['coverage'])}</td>"
                f"<td>{number(measured['selective_accuracy'])}</td>")

    return ("<table><tr><th></th><th>review threshold</th><th>certified</th><th>coverage</th><th>selective accuracy"
            f"</th></tr><tr><td>approved</td>{cells(a)}</tr><tr><td>candidate</td>{cells(b)}</tr></table>"
            "<p class='explain'>Coverage: the share of images that get a label rather than review; selective accuracy: "
            "how often those labels are right. A candidate that labels more images at the same accuracy saves review "
            "work; one that labels more at lower accuracy moves errors from people's desks into the record.</p>")


def changed_block(task: dict, changed: list[dict], thumbnails: dict[str, str]) -> str:
    summary = task["decisions"]
    if not changed:
        return "<p>No image's decision changed for this task.</p>"
    transitions = "".join(f"<tr><td>{esc(t['approved'])}</td><td>{esc(t['candidate'])}</td><td>{t['n']}</td></tr>"
                          for t in summary["transitions"])
    grid = "".join(f"<figure>{image_tag(thumbnails.get(c['path']), c['path'])}<figcaption>true <b>{esc(c['true'] or '?')}"
                   f"</b><br>{esc(c['approved'])} → <b>{esc(c['candidate'])}</b> ({esc(c['change'])})<br>"
                   f"<span class='path'>{esc(Path(c['path']).name)} · {esc(c['group'])}</span></figcaption></figure>"
                   for c in changed[:MAX_THUMBNAILS])
    rows = "".join(f"<tr><td>{esc(Path(c['path']).name)}</td><td>{esc(c['group'])}</td><td>{esc(c['true'])}</td>"
                   f"<td>{esc(c['approved'])} ({number(c['approved.p'])})</td><td>{esc(c['candidate'])} "
                   f"({number(c['candidate.p'])})</td><td>{esc(c['change'])}</td><td>{esc(c['candidate.reason'])}</td>"
                   "</tr>" for c in changed[:MAX_CHANGED_ROWS])
    more = f"<p>… {len(changed) - MAX_CHANGED_ROWS} more in decisions_changed.csv.</p>" if len(changed) > \
        MAX_CHANGED_ROWS else ""
    return (f"<p>{summary['n']} decision{'' if summary['n'] == 1 else 's'} changed: "
            f"{esc(kinds_text(summary['by_kind']))}.</p>"
            f"<table><tr><th>approved said</th><th>candidate says</th><th>images</th></tr>{transitions}</table>"
            f"<div class='grid'>{grid}</div>"
            f"<table><tr><th>image</th><th>group</th><th>true</th><th>approved (p)</th><th>candidate (p)</th>"
            f"<th>change</th><th>candidate's reason</th></tr>{rows}</table>{more}"
            "<p class='explain'>The station's own decision per image: a class, or review (below the threshold, or an "
            "input doubt). fixed: the candidate's label is right where the approved one was wrong; broken: the "
            "reverse. Thumbnails show the image as the approved model sees it.</p>")


def lot_section(lot: dict) -> Section:
    """Every well and lot of the reference lot with both models' verdicts (changed ones highlighted), then
    both models' reasons for each change; without ``--lot`` how to get it."""
    title = "Verdicts on a reference lot"
    if lot.get("changes") is None:
        return Section("lot", title, f"<p class='warn'>{esc(lot['note'])}</p>")
    spec, models = lot["spec"], lot["models"]

    def approval(side: str) -> str:
        m = models[side]
        if m["approved_by_spec"]:
            return f"approved by the spec as {(m['approval'] or {}).get('name')}"
        return "NOT approved by the spec: judged without qc's approval refusal, for this comparison only"

    facts = [("spec", f"{spec['name']} ({spec['path']})"), ("spec SHA-256", spec["sha256"]),
             ("criteria", "; ".join(spec["criteria"])), ("layout", lot["layout"]), ("images", lot["n_images"]),
             *[(f"{side} model", f"{approval(side)}; {(models[side]['conformance'] or {}).get('cases')} "
                                 "conformance cases agree") for side in ("approved", "candidate")]]
    n, total = lot["n_changed"], len(lot["units"])
    headline = (f"<p class='worse'>{n} of {total} wells / lots changed verdict.</p>" if n else
                f"<p class='same'>No verdict changed ({total} wells / lots judged by both).</p>")
    rows = "".join(
        f"<tr{' class=diff' if u['changed'] else ''}><td>{esc(u['level'])}</td><td>{esc(u['unit'])}</td>"
        f"<td>{esc(u['approved']['verdict'])}</td><td>{esc(u['candidate']['verdict'])}</td>"
        f"<td>{'changed' if u['changed'] else ''}</td></tr>" for u in lot["units"])
    table = ("<table><tr><th>level</th><th>well / lot</th><th>approved</th><th>candidate</th><th></th></tr>"
             f"{rows}</table>")
    reasons = ""
    if lot["changes"]:
        items = "".join(
            f"<tr class=diff><td>{esc(c['level'])} {esc(c['unit'])}</td>"
            f"<td><b>{esc(c['approved'])}</b>{reason_list(c['approved.reasons'])}</td>"
            f"<td><b>{esc(c['candidate'])}</b>{reason_list(c['candidate.reasons'])}</td></tr>"
            for c in lot["changes"])
        reasons = ("<h3>Why each changed verdict was given</h3><table><tr><th>well / lot</th><th>approved: verdict "
                   f"and qc's reasons</th><th>candidate: verdict and qc's reasons</th></tr>{items}</table>")
    return Section("lot", title, (
        facts_table(facts) + headline + table + reasons +
        f"<p class='explain'>{esc(lot['note'])} Rows whose verdict differs are highlighted; the changed ones are also "
        "in verdicts_changed.csv, and every verdict of both models is in comparison.json (lot_verdicts). A well "
        "moving to FAIL or REVIEW on a lot the approved model passes is a change the quality unit must "
        "understand before approving the candidate.</p>"))


def reason_list(reasons: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{esc(r)}</li>" for r in reasons) + "</ul>" if reasons else ""


def notes_section() -> Section:
    return Section("notes", "How to read this comparison", (
        "<p class='explain'>Both models were run by the station's own code on the same files. Intervals resample "
        "whole groups (wells, donors), because images of one group share their errors. The paired difference "
        "resamples the groups once per draw and scores both models on that draw, so it measures the change itself: "
        "two overlapping per-model intervals do not mean the change is nil, and two disjoint ones are not needed to "
        "show it. Verdicts on a reference lot (with --lot and --spec) are each model's `mscvision qc` judgement of "
        "the same lot; the candidate is judged there although the spec does not approve it yet, which `mscvision "
        "qc` itself refuses. A change-control record attaches this page, comparison.json, decisions_changed.csv "
        "and verdicts_changed.csv; the decision to approve stays with the quality unit.</p>"))


def changed_thumbnails(changed: list[dict], metadata) -> dict[str, str]:
    """Data URIs of the first changed images, as the approved model sees them."""
    from mscvision.core.errors import ImageError
    from mscvision.runtime.inputs import prepare_input

    out = {}
    for c in changed:
        if len(out) >= MAX_THUMBNAILS:
            break
        if c["path"] in out:
            continue
        try:
            out[c["path"]] = png_data_uri(model_view(prepare_input(c["path"], metadata).tensor, metadata.spec))
        except (ImageError, OSError):
            continue
    return out


EXTRA_CSS = """
tr.diff td{background:#fff4d6}.better{color:#1b6b20;font-weight:bold}.worse{color:#b71c1c;font-weight:bold}
.same{color:#555}
"""
