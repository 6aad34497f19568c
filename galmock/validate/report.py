"""``<run>/report/``: ``report.json`` (every number, with definitions), ``index.html`` (the
figures and tables, relative links only) and a ranking table for the terminal.

Example:
    >>> report = {  # the part of report.json these two read (stages.validate writes it all)
    ...     "job": {"name": "demo", "validate": {"upsamplers": ["cnf", "enbid"]}},
    ...     "selection": "the whole galaxy", "test_particles": 5000,
    ...     "training_particles": 80000, "draws_per_upsampler": 80000,
    ...     "classifier_test": {
    ...         "best": "cnf",
    ...         "scores": [{"label": "cnf", "lp": -0.6712, "stderr": 0.0041},
    ...                    {"label": "enbid", "lp": -0.7208, "stderr": 0.0052}],
    ...         "differences": {"enbid": {"mean": 0.0496, "stderr": 0.0031, "significance": 16.0}},
    ...         "pairwise_auc": {"cnf vs enbid": 0.61}},
    ...     "mmd": {
    ...         "cnf": {"mmd2": 2.1e-05, "stderr": 3.3e-05, "significance": 0.64, "pairs": 2500},
    ...         "enbid": {"mmd2": 0.0012, "stderr": 4.1e-05, "significance": 29.3, "pairs": 2500}},
    ... }
    >>> html = render_html(report)
    >>> html.count("<table>"), "Best upsampler: <b>cnf</b>" in html
    (3, True)
    >>> print(summary_table(report))
    upsampler             LP(C)     ± SE  LP(best)-LP     ± SE      MMD^2     ± SE
    cnf                 -0.6712   0.0041            –        –    2.1e-05  3.3e-05
    enbid               -0.7208   0.0052       0.0496   0.0031     0.0012  4.1e-05
    best: cnf (larger LP = closer to the held-out particles)
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPORT_FORMAT = "galmock.report/1"

DEFINITIONS = {
    "lp": "LP(C) = mean over test particles of log p(C | x) from the N-class classifier "
          "(natural log; uniform class prior). Larger (less negative) = closer to the "
          "simulation (Lim et al. 2022, eq. 12).",
    "lp_difference": "paired mean over test particles of log p(best | x) - log p(C | x), with "
                     "its standard error; significance = difference / stderr.",
    "auc": "area under the ROC curve on the classifier's validation samples (0.5 = "
           "indistinguishable, 1 = fully separable).",
    "truth_auc": "AUC of a two-class classifier between the upsampler's draws and true draws "
                 "from the known density (0.5 = indistinguishable).",
    "heldout_loglikelihood": "mean log density [ln((kpc km/s)^-3)] of the test particles under "
                             "the model and under the true density, both normalised to the "
                             "selection; difference = model - truth (paired; estimates "
                             "-KL(truth || model) on the selection, 0 is perfect).",
    "mmd2": "linear-time MMD^2 (Gretton et al. 2012), Gaussian kernel on standardised "
            "(x, y, z, vx, vy, vz), between the draws and the test particles; 0 within its "
            "stderr = same distribution.",
    "radial_profile": "per galactocentric shell: the fraction of the stars in it against the "
                      "fraction of the mass of the particles the plan covers (a sphere plan: "
                      "its ball), with Poisson errors from both counts; ratio 1 and |z| < ~3 = "
                      "faithful; shells of < 25 particles merged, r_median_kpc the median "
                      "radius of a shell's particles.",
    "seams": "per internal k-d face: step = log(rho_R/rho_L), the jump of the star density "
             "across the face from four slabs of seam_width_kpc (the smooth gradient removed); "
             "seam = step minus the same step of a seamless reference (true draws, else the "
             "particles), 0 within its stderr = seamless; vs particles = "
             "log(s_L/s_R) - log(p_L/p_R) in the two slabs touching the face (s: stars or "
             "draws, p: particles), whose stderr includes the particles' Poisson noise.",
}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def classifier_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """Label, LP, stderr, difference to the best, its stderr, significance; best first."""
    test = report.get("classifier_test", {})
    rows = []
    for s in test.get("scores", []):
        d = test.get("differences", {}).get(s["label"], {})
        rows.append([s["label"], s["lp"], s["stderr"], d.get("mean"), d.get("stderr"),
                     d.get("significance")])
    return rows


def render_html(report: Mapping[str, Any]) -> str:
    """``index.html``: every figure (relative ``src``) and the numbers as tables."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>galmock validation: {html.escape(report['job']['name'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}img{max-width:100%;border:1px solid #eee}"
        "p.def{color:#555;font-size:90%}</style></head><body>",
        f"<h1>Validation report: {html.escape(report['job']['name'])}</h1>",
        f"<p>Selection: {html.escape(report['selection'])}. Test particles: "
        f"{report['test_particles']}; training particles in the selection: "
        f"{report['training_particles']}; draws per upsampler: {report['draws_per_upsampler']}."
        "</p>",
    ]
    test = report.get("classifier_test", {})
    parts.append("<h2>Multi-model classifier test</h2>")
    if "skipped" in test:
        parts.append(f"<p>Skipped: {html.escape(test['skipped'])}</p>")
    else:
        parts.append(f"<p>Best upsampler: <b>{html.escape(test['best'])}</b>.</p>")
        parts.append(_table(["upsampler", "LP(C)", "stderr", "LP(best) - LP(C)", "stderr",
                             "significance [SE]"], classifier_rows(report)))
        parts.append(_table(["pair", "AUC"],
                            [[k, v] for k, v in test.get("pairwise_auc", {}).items()]))
        parts.append(f"<p class='def'>{DEFINITIONS['lp']} {DEFINITIONS['lp_difference']} "
                     f"{DEFINITIONS['auc']}</p>")
    truth = report.get("truth", {})
    parts.append("<h2>Absolute tests on the known truth</h2>")
    if not truth.get("available"):
        parts.append(f"<p>Not run: {html.escape(truth.get('reason', ''))}</p>")
    else:
        rows = []
        for label, t in truth.get("upsamplers", {}).items():
            ll = t.get("heldout_loglikelihood") or {}
            rows.append([label, t.get("auc"), ll.get("model_mean"), ll.get("model_stderr"),
                         ll.get("truth_mean"), ll.get("truth_stderr"), ll.get("difference_mean"),
                         ll.get("difference_stderr")])
        parts.append(_table(["upsampler", "AUC vs truth", "log L model", "stderr",
                             "log L truth", "stderr", "model - truth", "stderr"], rows))
        parts.append(f"<p class='def'>{DEFINITIONS['truth_auc']} "
                     f"{DEFINITIONS['heldout_loglikelihood']}</p>")
    parts.append("<h2>MMD to the held-out particles</h2>")
    parts.append(_table(["sample", "MMD^2", "stderr", "significance [SE]", "pairs"],
                        [[k, m["mmd2"], m["stderr"], m["significance"], m["pairs"]]
                         for k, m in report.get("mmd", {}).items()]))
    parts.append(f"<p class='def'>{DEFINITIONS['mmd2']}</p>")
    seams = report.get("seams", {})
    parts.append("<h2>Seams across region boundaries</h2>")
    if not seams.get("faces"):
        parts.append(f"<p>{html.escape(seams.get('note', 'no internal faces'))}</p>")
    else:
        parts.append(f"<p>Source: {html.escape(seams['source'])}; reference: "
                     f"{html.escape(seams.get('reference', 'none'))}.</p>")
        parts.append(_table(
            ["face", "seam (excess step)", "stderr", "step", "reference step", "stars L",
             "stars R", "particles L", "particles R", "vs particles", "stderr", "z"],
            [[f"{f['axis']} = {f['value_kpc']:.3f}", f.get("excess"), f.get("excess_stderr"),
              f.get("step"), f.get("reference_step"),
              f["samples_left"], f["samples_right"], f["particles_left"],
              f["particles_right"], f["log_ratio_difference"], f["stderr"], f["z"]]
             for f in seams["faces"]],
        ))  # fmt: skip
        parts.append(f"<p class='def'>{DEFINITIONS['seams']}</p>")
    observed = report.get("observables", {})
    parts.append("<h2>Gaia observables</h2>")
    if "visible" not in observed:
        parts.append(f"<p>{html.escape(observed.get('note', 'not computed'))}</p>")
    else:
        limit = observed["magnitude_limit_g"]
        parts.append(_table(
            ["G limit", "stars read", "stride", "with photometry", "visible", "visible fraction"],
            [["none" if limit is None else limit, observed["stars_read"], observed["stride"],
              observed["with_photometry"], observed["visible"], observed["visible_fraction"]]]))
    figures = report.get("figures", [])
    if figures:
        parts.append("<h2>Figures</h2>")
    for fig in figures:
        name = html.escape(fig["file"])
        parts.append(f"<h3>{html.escape(fig['title'])}</h3>"
                     f"<a href='{name}'><img src='{name}' alt='{html.escape(fig['title'])}'></a>")
    parts.append("<h2>Configuration</h2><p>The validate section (the resolved job is "
                 "<a href='report.json'>report.json</a> → job).</p><pre>"
                 + html.escape(json.dumps(report["job"]["validate"], indent=1)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def summary_table(report: Mapping[str, Any]) -> str:
    """The ranking for the terminal: LP per upsampler, the difference to the best, MMD."""
    test = report.get("classifier_test", {})
    mmd = report.get("mmd", {})
    lines = [f"{'upsampler':<16} {'LP(C)':>10} {'± SE':>8} {'LP(best)-LP':>12} {'± SE':>8} "
             f"{'MMD^2':>10} {'± SE':>8}"]
    rows = classifier_rows(report) or [[k, None, None, None, None, None] for k in mmd
                                       if k != "truth"]
    for label, lp, se, diff, dse, _ in rows:
        m = mmd.get(label, {})
        lines.append(f"{label:<16} {_fmt(lp):>10} {_fmt(se, 2):>8} {_fmt(diff):>12} "
                     f"{_fmt(dse, 2):>8} {_fmt(m.get('mmd2')):>10} {_fmt(m.get('stderr'), 2):>8}")
    if "best" in test:
        lines.append(f"best: {test['best']} (larger LP = closer to the held-out particles)")
    worst = report.get("radial_profile", {}).get("worst")
    if worst:
        lines.append(f"radial profile: worst shell {worst['r_lo_kpc']:g}-{worst['r_hi_kpc']:g} "
                     f"kpc, stars/particles = {_fmt(worst['ratio'])} (z = {_fmt(worst['z'])})")
    truth = report.get("truth", {})
    for label, t in truth.get("upsamplers", {}).items():
        ll = t.get("heldout_loglikelihood")
        extra = ""
        if ll:
            extra = (f", held-out log L model - truth = {_fmt(ll['difference_mean'])} ± "
                     f"{_fmt(ll['difference_stderr'], 2)}")
        lines.append(f"truth: {label}: AUC vs truth = {_fmt(t.get('auc'))}{extra}")
    return "\n".join(lines)


def finite_json(value: Any) -> Any:
    """``value`` with NaN and infinities as null (strict JSON), tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report_files(directory: Path, report: Mapping[str, Any]) -> None:
    """``report.json`` and ``index.html`` into ``directory`` (the staging directory)."""
    text = json.dumps(finite_json(report), indent=1, allow_nan=False)
    (directory / "report.json").write_text(text + "\n")
    (directory / "index.html").write_text(render_html(report))
