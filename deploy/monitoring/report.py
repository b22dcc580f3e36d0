"""What people read: the one-screen summary, and the HTML report with its PNG charts (reference against current)."""

from __future__ import annotations

import base64
import html
import itertools
from pathlib import Path
from typing import Any

from deploy.core.contract import PROBABILITY
from deploy.monitoring.drift import CROSSED, OK

MARK = {OK: "ok", CROSSED: "CROSSED"}


def summary(document: dict[str, Any]) -> str:
    """The one-screen text summary of a monitor run's document."""
    signals = document["signals"]
    window = document["window"]
    rows = document["rows"]
    lines = [
        f"{document['endpoint']} ({document['slot']}, environment {document['environment']}): model version "
        f"{document['version']} (build {document['build']}), window {window['text']} from {window['start']}",
        f"  rows: {rows['online']} online ({rows['online_source']}), {rows['batch']} from batch scores "
        f"({', '.join(rows['scoring_dates']) or 'no scoring date in the window'})",
        f"verdict: {document['verdict'].upper()}"
        + (f" ({', '.join(document['crossed'])})" if document["crossed"] else ""),
        "feature drift (Jensen-Shannon distance on the training split's bins; test KS or chi-square):",
    ]
    for name, entry in signals["features"].items():
        lines.append(f"  {name:<16} {_drift(entry)}")
    lines.append(f"prediction drift (churn_probability): {_drift(signals['predictions'])}")
    quality = signals["quality"]
    flagged = [f"{name} {', '.join(f'{what} {entry[what]:.1%}' for what in entry['crossed'])}"
               for name, entry in quality.items() if entry["status"] == CROSSED]
    judged = [entry for entry in quality.values() if entry["status"] in (OK, CROSSED)]
    lines.append("data quality: " + ("; ".join(flagged) if flagged else "ok" if judged else "not enough data"))
    lines.append(f"slot health: {_health(signals['health'])}")
    lines.append(f"realized quality: {_realized(signals['realized'])}")
    retrain = document.get("retrain") or {}
    if retrain.get("message"):
        lines.append(retrain["message"])
    if document.get("report"):
        lines.append(f"report: {document['report']}")
    if document.get("run_id"):
        lines.append(f"MLflow run {document['run_id']} in experiment {document['experiment']}")
    return "\n".join(lines)


def _drift(entry: dict[str, Any]) -> str:
    if entry.get("value") is None:
        reason = f": {entry['reason']}" if entry.get("reason") else f" ({entry.get('rows', 0)} rows)"
        return f"{entry['status']}{reason}"
    return (f"{MARK.get(entry['status'], entry['status'])}  distance {entry['value']:.3f} (max {entry['threshold']}), "
            f"{entry['test']} p={entry['p_value']:.2g}, {entry['rows']} rows")


def _health(entry: dict[str, Any]) -> str:
    if entry.get("status") not in (OK, CROSSED):
        return f"{entry.get('status')}" + (f": {entry['reason']}" if entry.get("reason") else
                                           f" ({entry.get('requests', 0)} requests)")
    rate = entry["error_rate"]
    p95 = entry["p95_latency_ms"]
    limits = entry["thresholds"]
    counts = f"{MARK[entry['status']]}  {entry['requests']} requests, {entry['failed']} failed ({rate:.1%}, max " \
        f"{limits['error_rate']:.0%})"
    return counts if p95 is None else f"{counts}, p95 {p95:.0f} ms (max {limits['p95_latency_ms']:.0f})"


def _realized(entry: dict[str, Any]) -> str:
    if entry.get("value") is None:
        return f"{entry['status']}" + (f" ({entry['reason']})" if entry.get("reason") else "")
    return (f"{MARK[entry['status']]}  AUC {entry['value']:.3f} on scores of {entry['scoring_date']} "
            f"(gate minimum {entry['threshold']}; {len(entry['dates'])} scoring dates looked at)")


# --- charts and the HTML report ---------------------------------------------------------------


def charts(document: dict[str, Any], folder: Path) -> dict[str, Path]:
    """`distributions.png`: every feature's (and the churn probabilities') reference and current shares per
    bin, one panel each; and a larger chart of its own for each distribution that drifted."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    folder.mkdir(parents=True, exist_ok=True)
    entries = {**document["signals"]["features"], PROBABILITY: document["signals"]["predictions"]}
    entries = {name: entry for name, entry in entries.items() if "reference_bins" in entry}
    drawn: dict[str, Path] = {}
    columns = 3
    figure, grid = pyplot.subplots((len(entries) + columns - 1) // columns, columns, figsize=(13, 2.6 * 4),
                                   squeeze=False)
    for axes, (name, entry) in zip(grid.flat, entries.items(), strict=False):
        _panel(axes, name, entry, small=True)
    for axes in list(grid.flat)[len(entries):]:
        axes.set_visible(False)
    figure.subplots_adjust(left=0.05, right=0.99, top=0.96, bottom=0.08, hspace=0.9, wspace=0.2)  # tight_layout: 1 s
    drawn["distributions"] = folder / "distributions.png"
    figure.savefig(drawn["distributions"], dpi=72)
    pyplot.close(figure)
    for name, entry in entries.items():
        if entry.get("status") != CROSSED:
            continue
        figure, axes = pyplot.subplots(figsize=(7, 3.5))
        _panel(axes, name, entry, small=False)
        figure.subplots_adjust(bottom=0.25)
        drawn[name] = folder / f"{name}.png"
        figure.savefig(drawn[name], dpi=72)
        pyplot.close(figure)
    return drawn


def _panel(axes: Any, name: str, entry: dict[str, Any], small: bool) -> None:
    labels = entry.get("categories") or bin_labels(entry["bin_edges"])
    positions = list(range(len(labels)))
    axes.bar([p - 0.2 for p in positions], _shares(entry["reference_bins"]), width=0.4, label="training split")
    axes.bar([p + 0.2 for p in positions], _shares(entry["current_bins"]), width=0.4,
             label=f"current ({entry['rows']} rows)")
    axes.set_xticks(positions, labels, rotation=30, ha="right", fontsize=6 if small else 8)
    value = f"distance {entry['value']:.3f}" if entry.get("value") is not None else entry["status"]
    mark = " DRIFTED" if entry.get("status") == CROSSED else ""
    axes.set_title(f"{name}: {value}{mark}", fontsize=9 if small else 11)
    axes.legend(fontsize=6 if small else 8)


def bin_labels(edges: list[float]) -> list[str]:
    """Bin i holds the values from cut i-1 (inclusive) to cut i (exclusive)."""
    shown = [f"{edge / 1000:.0f}k" if abs(edge) >= 10_000 else f"{edge:.4g}" for edge in edges]
    if not shown:
        return ["all"]
    return [f"< {shown[0]}", *[f"{low}-{high}" for low, high in itertools.pairwise(shown)], f">= {shown[-1]}"]


def _shares(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [count / total if total else 0.0 for count in counts]


def html_report(document: dict[str, Any], drawn: dict[str, Path]) -> str:
    """A self-contained page: the summary, every signal's table, and the charts inlined as PNG data."""
    escape = html.escape
    rows = []
    for name, entry in document["signals"]["features"].items():
        quality = document["signals"]["quality"][name]
        rows.append(
            f"<tr class='{entry['status'].replace(' ', '-')}'><td>{escape(name)}</td><td>{escape(entry['status'])}</td>"
            f"<td>{_number(entry.get('value'))}</td><td>{escape(entry['test'])} {_number(entry.get('p_value'))}</td>"
            f"<td>{entry['rows']}</td><td>{escape(quality['status'])}</td>"
            f"<td>{escape(_quality_detail(quality))}</td></tr>"
        )
    images = "".join(
        f"<figure><img alt='{escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode()}'/></figure>"
        for name, path in drawn.items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>churn monitor: {escape(document['endpoint'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} pre{{background:#f4f4f4;padding:1em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}}
tr.crossed td{{background:#fdd}} figure{{display:inline-block;margin:4px}}</style></head>
<body><h1>churn monitor: {escape(document['endpoint'])}, {escape(document['verdict'])}</h1>
<pre>{escape(summary({**document, 'report': None, 'run_id': None}))}</pre>
<h2>Features</h2><table><tr><th>feature</th><th>drift</th><th>Jensen-Shannon distance</th><th>test p-value</th>
<th>rows</th><th>data quality</th><th>detail</th></tr>{''.join(rows)}</table>
<h2>Reference (training split) against current</h2>{images}
</body></html>
"""


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _quality_detail(entry: dict[str, Any]) -> str:
    shares = [f"{key} {entry[key]:.2%}" for key in ("null_share", "out_of_range_share", "unseen_share") if key in entry]
    unseen = entry.get("unseen") or {}
    return ", ".join(shares + ([f"unseen {', '.join(unseen)}"] if unseen else []))

