"""A drift report as one self-contained HTML file: inline CSS and SVG, no script, no external host.

It shows what the JSON holds -- the verdict, each feature's statistics and its reference and window
shares per bin, the prediction's histogram, realized performance -- and never a row of data: bin
labels come from the profile (training quantiles and its top categories), values are shares.
"""

from __future__ import annotations

import html
import math
from typing import Any

from shared.profile import reference_counts

CSS = ("body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
       "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
       "td.l,th.l{text-align:left}.bad{color:#b00020;font-weight:600}.ok{color:#1b5e20}"
       "figure{display:inline-block;margin:0 1.5em 1.5em 0}figcaption{font-weight:600}")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.{digits}g}"
    return html.escape(str(v))


def _bin_labels(column: dict[str, Any]) -> list[str]:
    if column["kind"] == "numeric":
        edges = column["edges"]
        if not edges:
            return ["all"]
        return [f"< {edges[0]:.4g}"] + [f"{a:.4g}-{b:.4g}" for a, b in zip(edges, edges[1:], strict=False)] + \
            [f">= {edges[-1]:.4g}"]
    return list(column["top"]) + ["other"]


def _bars(title: str, labels: list[str], reference: list[int], window: list[int]) -> str:
    """Reference (grey) and window (blue) shares per bin, as inline SVG."""
    rs, ws = sum(reference) or 1, sum(window) or 1
    r = [c / rs for c in reference]
    w = [c / ws for c in window]
    top = max(r + w + [1e-9])
    bw, gap, h = 14, 8, 120
    width = len(labels) * (2 * bw + gap) + 10
    parts = [f'<svg width="{width}" height="{h + 70}" role="img">']
    for i, (a, b) in enumerate(zip(r, w, strict=True)):
        x = 5 + i * (2 * bw + gap)
        ha, hb = h * a / top, h * b / top
        parts.append(f'<rect x="{x}" y="{h - ha:.1f}" width="{bw}" height="{ha:.1f}" fill="#9e9e9e">'
                     f'<title>reference {a:.3f}</title></rect>')
        parts.append(f'<rect x="{x + bw}" y="{h - hb:.1f}" width="{bw}" height="{hb:.1f}" fill="#1e88e5">'
                     f'<title>window {b:.3f}</title></rect>')
        label = html.escape(labels[i][:18])
        parts.append(f'<text x="{x + bw}" y="{h + 10}" font-size="9" transform="rotate(45 {x + bw} {h + 10})">'
                     f'{label}</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def render(report: dict[str, Any], profile: dict[str, Any], report_id: str) -> str:
    d, w, m = report["drift"], report["window"], report["model"]
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>fti drift report {html.escape(report_id)}</title><style>{CSS}</style></head><body>",
           f"<h1>{html.escape(m['name'])} version {html.escape(str(m['version']))}</h1>",
           f"<p>Window {html.escape(w['label'])} ({html.escape(w['kind'])}): {w['rows']} predictions from "
           f"{html.escape(w['start'])} to {html.escape(w['end'])}. Report <code>{html.escape(report_id)}</code>.</p>"]
    if d.get("status") != "ok":
        out.append(f"<p class=\"bad\">{html.escape(str(d.get('status')))}: {html.escape(str(d.get('message', '')))}</p>")
    else:
        drifted = d["drifted"]
        cls = "bad" if drifted or d.get("prediction", {}).get("drifted") else "ok"
        out.append(f"<p class=\"{cls}\">Drifted features: {html.escape(', '.join(drifted) or 'none')} "
                   f"(share {d['drift_share']:.3f}); prediction drift: "
                   f"{_fmt(d.get('prediction', {}).get('drifted'))}. A feature drifts when its Benjamini-Hochberg "
                   f"q-value is below {d['thresholds']['alpha']} and its PSI is at least "
                   f"{d['thresholds']['min_psi']}; history features drift by construction and are not counted.</p>")
        out.append("<table><tr><th class=\"l\">feature</th><th>kind</th><th>PSI</th><th>JS</th><th>KS</th>"
                   "<th>q-value</th><th>missing ref</th><th>missing now</th><th>out of range / unseen</th>"
                   "<th>drifted</th></tr>")
        for name, f in sorted(d["features"].items()):
            odd = f.get("out_of_range_rate", f.get("unseen_rate"))
            mark = "bad" if f["drifted"] else ""
            note = " (history)" if f["by_construction"] else ""
            out.append(f"<tr><td class=\"l {mark}\">{html.escape(name)}{note}</td><td>{f['kind']}</td>"
                       f"<td>{_fmt(f['psi'])}</td><td>{_fmt(f['js'])}</td><td>{_fmt(f['ks_distance'])}</td>"
                       f"<td>{_fmt(f['q_value'])}</td><td>{_fmt(f['missing_rate']['reference'])}</td>"
                       f"<td>{_fmt(f['missing_rate']['window'])}</td><td>{_fmt(odd)}</td>"
                       f"<td class=\"{mark}\">{_fmt(f['drifted'])}</td></tr>")
        out.append("</table>")
        if "prediction" in d:
            out.append(_bars("model output", _bin_labels(profile["score"]), reference_counts(profile["score"]),
                             d["prediction"]["counts"]))
        for name, f in sorted(d["features"].items()):
            out.append(_bars(name, _bin_labels(profile["features"][name]),
                             reference_counts(profile["features"][name]), f["counts"]))
    p = report["performance"]
    out.append("<h2>Realized performance</h2>")
    if p.get("status") != "ok":
        out.append(f"<p>{html.escape(str(p.get('status')))} ({p['labeled_rows']} labeled rows).</p>")
    else:
        out.append("<table>" + "".join(f"<tr><th class=\"l\">{html.escape(k)}</th><td>{_fmt(v)}</td></tr>"
                                       for k, v in sorted(p.items()) if k != "status") + "</table>")
    out.append("</body></html>")
    return "\n".join(out)


__all__ = ["render"]
