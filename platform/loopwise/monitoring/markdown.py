"""A drift report as Markdown a person reads in the Dagster UI: the per-column table, then small histograms."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopwise.monitoring.stattests import DISPLAY_NAMES, KS

if TYPE_CHECKING:
    from loopwise.monitoring.drift import ColumnDrift, DriftReport

BAR_WIDTH = 12
EIGHTHS = " ▏▎▍▌▋▊▉"


def report_markdown(report: DriftReport, max_histograms: int = 10) -> str:
    counted = "value or null-share drift" if report.null_drift_counts else "value drift"
    lines = [
        f"**Dataset drift: {'yes' if report.drifted else 'no'}**: {report.number_drifted} of {len(report.columns)} "
        f"columns drifted ({report.share_drifted:.0%}; {counted}); the dataset drifts at {report.drift_share:.0%} or more.",
        "",
        "| column | kind | test | statistic | threshold | nulls (reference → current) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [column_row(c) for c in report.columns]
    if any(not c.exact for c in report.columns):
        lines += ["", "≈ verdict computed from the profile, not certified identical to one on the full reference."]
    shown = sorted(report.columns, key=lambda c: not c.counts_as_drifted)[:max_histograms]
    for c in shown:
        lines += ["", f"**{c.name}** ({c.kind}, {'drifted' if c.counts_as_drifted else 'no drift'}): share of rows per bin",
                  "", "| bin | reference | current |", "|---|---|---|"]
        h = c.histogram
        top = max([*h["reference"], *h["current"], 1e-12])
        lines += [f"| {label} | {bar(r, top)} | {bar(k, top)} |"
                  for label, r, k in zip(h["bins"], h["reference"], h["current"], strict=True)]
    return "\n".join(lines) + "\n"


def column_row(c: ColumnDrift) -> str:
    name = DISPLAY_NAMES.get(c.test, c.test)
    if c.statistic is None or c.threshold is None:
        statistic, threshold = "–", "–"
    elif c.p_value is not None:
        statistic = f"p = {c.p_value:.3g} (statistic {c.statistic:.3g})"
        threshold = f"p {'≤' if c.test == KS else '<'} {c.threshold:g}"
    else:
        statistic = f"{c.statistic:.3g}"
        threshold = f"≥ {c.threshold:g}"
    if not c.exact:
        statistic = "≈ " + statistic
    if "significance" in c.details:  # an effect past its threshold, then tested for significance
        gate = c.details["significance"]
        statistic += f"; {DISPLAY_NAMES[gate['test']]} {gate['p_value']:.3g}"
        threshold += f" and p ≤ {gate['at']:g}"
    if c.kind == "text" and "unseen_word_share" in c.details:
        statistic += f"; unseen words {c.details['unseen_word_share']:.1%} (reference {c.details['reference_unseen_word_share']:.1%})"
    verdicts = []
    if c.drifted:
        verdicts.append("**drifted**")
    if c.null_drifted:
        verdicts.append("**null share drifted**")
    nulls = f"{c.null_share_reference:.1%} → {c.null_share_current:.1%}"
    return f"| {c.name} | {c.kind} | {name} | {statistic} | {threshold} | {nulls} | {', '.join(verdicts) or 'ok'} |"


def bar(share: float, top: float) -> str:
    """A share as a bar of block characters, scaled so the largest share fills the width, then the percentage."""
    eighths = round(share / top * BAR_WIDTH * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (EIGHTHS[part] if part else "")
    return f"`{text.ljust(BAR_WIDTH)}` {share:.1%}"

