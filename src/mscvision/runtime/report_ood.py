"""The report's OOD section (``mscvision evaluate --ood NAME=PATH``), from metrics.json's ``"ood"``
block (runtime/ood_evaluation.py): the gate as deployed, its flag rate on the evaluated data, and per
source and per score AUROC, FPR at 95% TPR and the flag rate, beside the accuracy of labelled sources.
Tables only (no figure), so the page's figures stay those of the task sections."""

from __future__ import annotations

from mscvision.runtime.ood_evaluation import COMBINED, FPR_KEY
from mscvision.runtime.report import Section, facts_table, number, percent
from mscvision.runtime.svg import esc

SECTION_ID = "ood"


def ood_section(block: dict) -> Section:
    gate = block["gate"]
    parts = [_gate_facts(block)]
    parts.append(_in_distribution(block))
    if block["sources"]:
        parts.append(_sources_summary(block))
        if gate:
            for key, title in (("auroc", "AUROC (source vs the evaluated data)"),
                               (FPR_KEY, "FPR at 95% TPR (share of the evaluated data flagged to catch 95% of the "
                                         "source)"),
                               ("flag_rate", "Flagged at the deployed threshold")):
                parts.append(_per_score(block, key, title))
    else:
        parts.append("<p>No OOD source was given (<code>--ood NAME=PATH</code>): only the flag rate on the evaluated "
                     "data is shown.</p>")
    parts.append(_explain(block))
    return Section(SECTION_ID, "Out-of-distribution gate", "".join(parts))


def _label(name: str, gate: dict) -> str:
    if name == COMBINED:
        return "combined gate"
    if name == "learned":
        return f"learned ({gate.get('learned_method')})"
    return name


def _gate_facts(block: dict) -> str:
    gate = block["gate"]
    if not gate:
        return f"<p class='warn'><b>{esc(block['note'])}.</b> No flag rate or AUROC can be given.</p>"
    levels = ", ".join(f"{_label(n, gate)} p ≤ {gate['levels'][n]:.3g} ({gate['n_calibration'][n]} calibration "
                       "images)" for n in gate["scores"])
    facts = [("alpha", f"{gate['alpha']:g}"), ("sharing", gate["alpha_sharing"]), ("scores and their levels", levels)]
    if gate.get("learned_fitted_on"):
        facts.append(("learned score fitted on", gate["learned_fitted_on"]))
    return facts_table(facts)


def _in_distribution(block: dict) -> str:
    ind, gate = block["in_distribution"], block["gate"]
    status = ", ".join(f"{n} {s}" for s, n in ind["status"].items())
    text = f"<h3>The evaluated data (in-distribution)</h3><p>{ind['n']} images ({esc(status)})."
    if not gate:
        return text + "</p>"
    rates = ind["flag_rate"]
    ceiling = ind["combined_auroc_ceiling"]
    rows = "".join(f"<tr><td>{esc(_label(n, gate))}</td><td>{gate['levels'][n]:.3g}</td><td>{percent(rates[n])}</td>"
                   f"<td>{number(ceiling[n])}</td></tr>" for n in gate["scores"])
    rows += (f"<tr><th>{_label(COMBINED, gate)}</th><td>≤ {gate['alpha']:g}</td><td><b>{percent(rates[COMBINED])}"
             "</b></td><td></td></tr>")
    return (text + " An in-distribution image should be flagged with probability at most its level.</p>"
            "<table><tr><th>score</th><th>level (share of alpha)</th><th>flagged</th><th>combined AUROC at most, for "
            "a source only this score catches</th></tr>" + rows + "</table>"
            "<p class='explain'>The ceiling: an image beyond every calibration image of a score gets the smallest "
            "adjusted p-value that score can give, and so does about one in n + 1 of the in-distribution images "
            "(by exchangeability); a source that only this score catches ties with them, however clearly it is "
            "caught. More calibration images raise the ceiling.</p>")


def _sources_summary(block: dict) -> str:
    gate = block["gate"]
    head = ("<tr><th>source</th><th>images</th><th>refused (error rows)</th>"
            + ("<th>AUROC (combined)</th><th>FPR at 95% TPR</th><th>flagged</th>" if gate else "")
            + "<th>balanced accuracy (drop from the evaluated data; of those the gate passed)</th></tr>")
    rows = []
    for name, s in block["sources"].items():
        cells = [esc(name), str(s["n"]), str(s["n_error"])]
        if gate:
            c = s["scores"][COMBINED]
            cells += [number(c["auroc"]), percent(c[FPR_KEY]), f"<b>{percent(c['flag_rate'])}</b>"]
        cells.append(_accuracy(s))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "<h3>Sources</h3><table>" + head + "".join(rows) + "</table>"


def _accuracy(source: dict) -> str:
    if not source["labelled"]:
        return "unlabelled"
    parts = []
    for task, a in (source["accuracy"] or {}).items():
        if a is None or a["balanced_accuracy"] is None:
            parts.append(f"{esc(task)}: – (no label is a class of the model)")
            continue
        drop = a.get("balanced_accuracy_drop")
        passed = a.get("passed")
        parts.append(f"{esc(task)}: {a['balanced_accuracy']:.3f}"
                     + (f" (−{drop:.3f})" if drop is not None and drop >= 0 else
                        f" (+{-drop:.3f})" if drop is not None else "")
                     + (f"; passed {passed['balanced_accuracy']:.3f} of {passed['n']}" if passed else
                        "; none passed"))
    return "<br>".join(parts) or "–"


def _per_score(block: dict, key: str, title: str) -> str:
    gate = block["gate"]
    names = [*gate["scores"], COMBINED]
    head = "<tr><th>source</th>" + "".join(f"<th>{esc(_label(n, gate))}</th>" for n in names) + "</tr>"
    fmt = number if key == "auroc" else percent
    rows = "".join("<tr><td>" + esc(src) + "</td>" + "".join(f"<td>{fmt(s['scores'][n][key])}</td>" for n in names)
                   + "</tr>" for src, s in block["sources"].items())
    return f"<h3>{esc(title)}</h3><table>{head}{rows}</table>"


def _explain(block: dict) -> str:
    d = block["definitions"]
    return ("<p class='explain'>Each source is scored by the station's own rows. AUROC: the probability that an "
            "image of the source scores as more unusual than an image of the evaluated data, ties counted one half "
            f"(1 = perfectly separated, 0.5 = chance). FPR at 95% TPR: {esc(d[FPR_KEY])}. Flagged: the share the "
            f"deployed gate sends to review. A single score: {esc(d['single'])}. The combined gate: "
            f"{esc(d[COMBINED])}. Images the station refused (error rows: unreadable, wrong size or channels) get "
            "no label either, and are left out of these figures. Accuracy is the top-class call before any threshold "
            "or gate, so a source whose accuracy falls far should also be flagged.</p>")
