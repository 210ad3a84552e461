"""The pipeline's `report.md`: the comparison table, training curves and the dissection's evidence.

Everything in it is read back from the stages' own outputs (metrics.json of each run, the dissection store),
so the report shows what was measured, never a number typed in by hand.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files
import matplotlib.pyplot as plt  # noqa: E402

from kdsr.dataset import PreparedDataset  # noqa: E402
from kdsr.files import write_json_atomic, write_text_atomic  # noqa: E402
from trainer.retention import read_run, run_retention  # noqa: E402

log = logging.getLogger(__name__)

TABLE_METRICS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20")


def load_metrics(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the run has no metrics (did training finish?)")
    return json.loads(path.read_text())


def comparison_rows(runs: list[tuple[str, Path]]) -> list[dict[str, Any]]:
    rows = []
    for label, run_dir in runs:
        m = load_metrics(run_dir)
        test = m.get("test") or {}
        hist = m.get("valid_history", [])
        secs = [h["seconds"] for h in hist if "seconds" in h]
        rows.append(
            {
                "label": label,
                "run": str(run_dir),
                **{k: test.get(k) for k in TABLE_METRICS},
                "valid_ndcg@10": m.get("best_valid_ndcg@10"),
                "selected_epoch": m.get("selected_epoch"),
                "epochs": len(hist),
                "sec_per_epoch": sum(secs) / len(secs) if secs else None,
                "ranking": (m.get("protocol") or {}).get("ranking"),
                "retention": run_retention(read_run(run_dir)) if (Path(run_dir) / "best").exists() else {},
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| variant | Recall@10 | NDCG@10 | Recall@20 | NDCG@20 | selected epoch / run | s per epoch "
        "| encoder kept (pair-cosine r) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    base = rows[0]["ndcg@10"] if rows and rows[0]["ndcg@10"] else None
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r[k], float) else "n/a" for k in TABLE_METRICS]
        if base and r is not rows[0] and isinstance(r["ndcg@10"], float):
            cells[1] += f" ({(r['ndcg@10'] / base - 1) * 100:+.1f}%)"
        epoch_s = f"{r['sec_per_epoch']:.1f}" if r["sec_per_epoch"] else "n/a"
        kept = ", ".join(f"{m} {pair:.2f}" for m, (_, pair) in r.get("retention", {}).items()) or "-"
        lines.append(
            f"| {r['label']} | {' | '.join(cells)} | {r['selected_epoch']} / {r['epochs']} | {epoch_s} | {kept} |"
        )
    return "\n".join(lines)


def plot_curves(runs: list[tuple[str, Path]], out: Path) -> Path:
    """Loss terms and validation NDCG@10 per epoch, one line per run."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, run_dir in runs:
        hist = load_metrics(run_dir).get("valid_history", [])
        epochs = [h["epoch"] for h in hist]
        for term in sorted({k for h in hist for k in h if k.startswith("loss/")}):
            ax_loss.plot(epochs, [h.get(term) for h in hist], marker=".", label=f"{label}: {term[5:]}")
        ax_val.plot(epochs, [h.get("ndcg@10") for h in hist], marker="o", label=label)
    ax_loss.set(title="training loss terms (mean per epoch)", xlabel="epoch", yscale="log")
    ax_val.set(title="validation NDCG@10 (model selection)", xlabel="epoch")
    ax_loss.legend(fontsize=7)
    ax_val.legend(fontsize=8)
    fig.tight_layout()
    path = out / "training_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rel(path: Path, base: Path) -> Path:
    return path.relative_to(base) if path.is_relative_to(base) else path


def _section(markdown: Path, heading: str) -> str:
    """One `## ` section of another report (without its heading), with its headings demoted one level."""
    lines = markdown.read_text().splitlines()
    if heading not in lines:
        return ""
    body = []
    for line in lines[lines.index(heading) + 1 :]:
        if line.startswith("## "):
            break
        body.append("#" + line if line.startswith("#") else line)
    return "\n".join(body).strip()


def write_report(cfg: Any, results: dict, dataset_dir: Path, dissection: Path, runs: list[tuple[str, Path]]) -> Path:
    """report.md (and comparison.json, the same rows as data) under the pipeline's out_dir."""
    from dissect.report import report as dissection_report

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = PreparedDataset.open(dataset_dir)
    titles = dict(zip(ds.items["original_id"].cast(str).to_list(), ds.items[ds.text_fields()[0]].cast(str).to_list()))
    rows = comparison_rows(runs)
    curves = plot_curves(runs, out)
    evidence = dissection_report(dissection, titles, out / "dissection", name=cfg.name)
    text = "\n\n".join(
        [
            header(cfg.name, ds, rows),
            metrics_section(rows, cfg.train_overrides, curves),
            evidence_section(evidence, out),
            stages_section(results),
        ]
    )
    path = write_text_atomic(out / "report.md", text + "\n")
    write_json_atomic(out / "comparison.json", rows)
    log.info("test metrics (checkpoint selected on validation NDCG@10):\n%s", markdown_table(rows))
    return path


def header(name: str, ds: PreparedDataset, rows: list[dict[str, Any]]) -> str:
    stats = ds.stats
    ranking = ", ".join(sorted({r["ranking"] for r in rows if r["ranking"]})) or "full ranking"
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""# {name}: pipeline report

Generated {generated} by `kdsr pipeline`. Dataset `{ds.name}`:
{stats["n_users"]:,} users, {stats["n_items"]:,} items, {stats["n_interactions"]:,} interactions,
split protocol `{stats.get("protocol")}`; evaluation: {ranking}."""


def validation_winner(rows: list[dict[str, Any]]) -> str:
    """Which variant won on validation NDCG@10 (the selection metric) and by how much over the first row, with
    its test figure: test only reports the choice, it never makes it."""
    scored = [r for r in rows if isinstance(r.get("valid_ndcg@10"), float)]
    if len(scored) < 2:
        return ""
    best, first = max(scored, key=lambda r: r["valid_ndcg@10"]), rows[0]
    test = f"{best['ndcg@10']:.4f}" if isinstance(best.get("ndcg@10"), float) else "not read"
    if best is first:
        lift = "the first row itself"
    elif isinstance(first.get("valid_ndcg@10"), float) and first["valid_ndcg@10"] > 0:
        lift = f"{(best['valid_ndcg@10'] / first['valid_ndcg@10'] - 1) * 100:+.1f}% over {first['label']}"
    else:
        lift = f"{first['label']} has no validation score"
    return (
        f"On validation, **{best['label']}** won: NDCG@10 {best['valid_ndcg@10']:.4f} ({lift}); its test NDCG@10, "
        f"read once with the selected checkpoint: {test}. One seed per variant: differences within seed noise "
        "(`kdsr sweep` measures it) are not established.\n\n"
    )


def metrics_section(rows: list[dict[str, Any]], train_overrides: list[str], curves: Path) -> str:
    shortened = any(o.startswith(("epochs=", "max_steps=")) for o in train_overrides)
    budget_note = (
        "These runs use a shortened budget set for this pipeline, so they show the pipeline working, "
        "not the method's converged quality (`kdsr sweep configs/sweep/beauty-arms.yaml` runs full budgets). "
        if shortened
        else ""
    )
    return f"""## Test metrics (checkpoint selected on validation NDCG@10)

{validation_winner(rows)}{markdown_table(rows)}

Percentages: NDCG@10 relative to the first row. Encoder kept: Pearson r between item-pair cosines of the
trained modality table and of the stored features it started from (1.0 = nothing forgotten;
`trainer/retention.py`), the modality forgetting that distillation and the slow step are meant to prevent.
{budget_note}Budget and settings of each run are in its
`config.yaml`; the train overrides applied to every variant here: `{" ".join(train_overrides) or "none"}`.

![training curves]({curves.name})"""


def evidence_section(evidence: Path, out: Path) -> str:
    return f"""## What the encoder's correlations look like

Dimension affinity of the reduced features, ordered by facet (bright blocks on the diagonal: dimensions
that co-vary form one facet), and the item pairs closest to a few correlation types. The whole dissection
report, with every code's centroid and share of pairs, is [here]({_rel(evidence, out)}).

![facet heatmap]({_rel(evidence.parent / "heatmap.png", out)})

{_section(evidence, "## Item pairs closest to a few centroids")}"""


def stages_section(results: dict) -> str:
    lines = [
        f"| {r.name} | {'cached' if r.cached else f'{r.seconds:.0f} s'} | `{r.output}` |" for r in results.values()
    ]
    return "## Stages\n\n| stage | time | output |\n|---|---|---|\n" + "\n".join(lines)
