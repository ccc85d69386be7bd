"""The README's benchmark tables, generated from the JSON reports under ``benchmarks/results/``.

``python benchmarks/correlate.py --save benchmarks/results/cpu.json`` (and, on a GPU,
``--device cuda --pair ... --save benchmarks/results/h100.json``) write the reports; this
script rewrites the part of README.md between ``<!-- benchmarks:begin -->`` and
``<!-- benchmarks:end -->`` from them (``--check``: only say whether it is up to date).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"


def _where(report: dict, path: Path) -> str:
    return (
        f"`{path.relative_to(ROOT)}`: {report['machine']}, {report['threads']} threads, "
        f"torch {report['torch']}, {report['date']}"
    )


def _update_rows(report: dict) -> list[str]:
    rows = []
    for run in report.get("a_update_vs_matmul", []):
        spread = ", ".join(f"{r:.2f}" for r in run["ratios"])
        rows.append(
            f"| (a) update / plain product, {run['shape']}, {run['products']} | "
            f"**{run['ratio']:.2f}** (median of {len(run['ratios'])}: {spread}) |"
        )
    return rows


def cpu_table(report: dict, path: Path) -> list[str]:
    """Rows of the CPU report: (a) update ratios, (b) memory growth, (c) capture ratio."""
    rows = [f"CPU ({_where(report, path)}):", "", "| figure | value |", "|---|---|"]
    rows += _update_rows(report)
    if "b_memory" in report:
        memory = report["b_memory"]
        rows.append(
            "| (b) peak memory of a correlate pass, 4x the tokens / 1x | "
            f"**{memory['peak_ratio_4x_tokens']:.2f}** |"
        )
    if "c_hooks_vs_forward" in report:
        hooks = report["c_hooks_vs_forward"]
        rows.append(
            "| (c) capture / the same layers' plain Hugging Face forward | "
            f"**{hooks['ratio']:.2f}** (bridge hooks: {hooks['hooks_ratio']:.2f}) |"
        )
    return rows


def gpu_table(report: dict, path: Path) -> list[str]:
    """Rows of a GPU report: (a) update ratios, (d) one row per measured pair layout."""
    rows = [f"GPU ({_where(report, path)}):", "", "| figure | value |", "|---|---|"]
    rows += _update_rows(report)
    rows += [
        "",
        "| (d) pair shape | rows per unit (units per pair) | tokens/s per unit | tokens/s per pair "
        "| of the bf16 product rate | peak GPU memory | capture |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair in report.get("d_pairs", []):
        capture = "fused trunk" if pair["fused_trunk"] else "bridge hooks"
        rows.append(
            f"| {pair['shape']} ({pair['neurons']:,} neurons) | {pair['rows_in_unit']:,} "
            f"({pair['blocks_per_pair']}) | {pair['unit_tokens_per_s']:,.0f} | "
            f"**{pair['pair_tokens_per_s']:,.0f}** | {pair['fraction_of_product_rate']:.2f} | "
            f"{pair['peak_gpu_gib']:.1f} GiB | {capture} |"
        )
    errors = [p for p in report.get("d_pairs", []) if "max_abs_error_vs_float64" in p]
    for pair in errors:
        rows.append(
            f"\n{pair['shape']}: max |correlation error| on a {pair['block_neurons']:,}-neuron "
            f"block over {pair.get('precision_tokens', 12288):,} tokens, the run's path (bf16 models, bf16 "
            f"products) against float32 models with float64 products: "
            f"**{pair['max_abs_error_vs_float64']:.1e}** (products alone: "
            f"{pair['max_abs_error_products_only']:.1e})."
        )
    return rows


def render() -> str:
    """The generated block, from every report under ``benchmarks/results/``."""
    parts = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        report = json.loads(path.read_text())
        if report.get("device", "cpu").startswith("cuda"):
            if "d_pairs" in report and "profile" not in path.stem:
                parts.append("\n".join(gpu_table(report, path)))
        else:
            parts.append("\n".join(cpu_table(report, path)))
    return "\n\n".join([BEGIN, *parts, END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is stale")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{readme}: no {BEGIN} ... {END} block to fill")
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    updated = text[:start] + render() + text[stop:]
    if args.check:
        sys.exit(0 if updated == text else f"{readme}: benchmark tables are stale")
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(updated)
    tmp.replace(readme)


if __name__ == "__main__":
    main()
