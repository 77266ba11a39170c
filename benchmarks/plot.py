"""Plot a matmul benchmark result: speedup over fp16 against M, one panel per layer shape.

    python benchmarks/plot.py benchmarks/results/matmul_<card>.json [--out PLOT.png]
    python benchmarks/plot.py --selftest [--out /tmp/int8q_plot_selftest.png]

--selftest draws synthetic numbers, to check the figure without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")  # files only: benchmark machines have no display
import matplotlib.pyplot as plt  # noqa: E402

import common  # noqa: E402

# int8q's own lines are drawn solid and heavy, the baselines thin and dashed.
_STYLE = {
    "int_mm": dict(color="tab:gray", marker="v"),
    "torch_w8a8": dict(color="tab:brown", marker="s"),
    "fp8_scaled_mm": dict(color="tab:purple", marker="D"),
    "triton_int8": dict(color="tab:cyan", marker="^"),
    "triton_w8a8": dict(color="tab:olive", marker="<"),
    "int8q_dynamic": dict(color="tab:red", marker="o"),
    "int8q_static": dict(color="tab:orange", marker="o"),
    "int8q_scaled_mm": dict(color="tab:green", marker="o"),
}


def plot_matmul(payload: Dict[str, object], path: str) -> None:
    records = payload["results"]
    labels: Dict[str, str] = payload["methods"]
    shapes = [tuple(s) for s in payload["config"]["shapes"]
              if any(r["K"] == s[0] and r["N"] == s[1] for r in records)]
    if not shapes:
        return
    cols = min(2, len(shapes))
    rows = math.ceil(len(shapes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 4.6 * rows), squeeze=False)
    lines = {}
    failures = False
    for ax, (k, n) in zip(axes.flat, shapes):
        shape_recs = [r for r in records if r["K"] == k and r["N"] == n]
        ms = sorted({r["M"] for r in shape_recs})
        for key in labels:
            if key == "fp16":
                continue
            by_m = {r["M"]: r for r in shape_recs if r["method"] == key}
            ys = [by_m[m].get("speedup_vs_fp16", math.nan) if m in by_m and by_m[m]["status"] == "ok" else math.nan
                  for m in ms]
            if all(math.isnan(y) for y in ys):
                continue
            own = key.startswith("int8q")
            style = _STYLE.get(key, dict(marker="."))
            (line,) = ax.plot(ms, ys, label=labels[key], linewidth=2.2 if own else 1.2,
                              linestyle="-" if own else "--", markersize=5 if own else 4, **style)
            lines[key] = line
            # A wrong or failed int8q result must show in the figure, not only as a gap.
            bad = [m for m in ms if m in by_m and by_m[m]["status"] in ("mismatch", "error")]
            if bad:
                ax.plot(bad, [0.08] * len(bad), linestyle="none", marker="X", markersize=11,
                        color=style.get("color"), markeredgecolor="black")
                failures = True
        ax.axhline(1.0, color="black", linestyle=":", linewidth=1.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms)
        ax.set_xticklabels([str(m) for m in ms], fontsize=8, rotation=45 if len(ms) > 8 else 0)
        ax.set_ylim(bottom=0)
        ax.set_title(f"K={k}, N={n}", fontsize=11)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("speedup over fp16 F.linear")
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(shapes):]:
        ax.set_visible(False)
    handles = list(lines.values()) + [plt.Line2D([], [], color="black", linestyle=":", label="fp16 F.linear (cuBLAS) = 1")]
    if failures:
        handles.append(plt.Line2D([], [], color="gray", marker="X", markersize=10, markeredgecolor="black",
                                  linestyle="none", label="wrong result or error: not timed"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    machine = payload["machine"]
    fig.suptitle(f"W8A8 linear layer: speedup over fp16, {machine['device_name']} "
                 f"(torch {machine['torch']}, CUDA {machine['cuda']})", fontsize=13)
    legend_rows = math.ceil(len(handles) / 3)
    legend_inches = 0.18 * legend_rows + 0.3
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 0.96))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def synthetic_payload() -> Dict[str, object]:
    """Plausible-looking numbers with a refusal, a mismatch and a missing method, for --selftest."""
    curves = {  # speedup at small M, at large M
        "int_mm": (None, 1.25), "torch_w8a8": (0.55, 0.75), "fp8_scaled_mm": (1.6, 1.85),
        "triton_int8": (1.2, 1.65), "triton_w8a8": (0.9, 1.5), "int8q_dynamic": (1.8, 1.9),
        "int8q_static": (1.85, 1.95), "int8q_scaled_mm": (1.9, 2.0),
    }
    records: List[Dict[str, object]] = []
    for k, n in common.LINEAR_SHAPES:
        for i, m in enumerate(common.TOKEN_COUNTS):
            fp16_us = 10.0 + 2 * n * k / 3.0e6 + 2.0 * m * n * k / 6.0e8
            records.append({"method": "fp16", "M": m, "K": k, "N": n, "status": "ok", "us": fp16_us})
            t = i / (len(common.TOKEN_COUNTS) - 1)
            for key, (small, large) in curves.items():
                rec = {"method": key, "M": m, "K": k, "N": n}
                if small is None and m <= 16:
                    records.append({**rec, "status": "refused", "note": "needs M > 16"})
                elif key == "int8q_static" and (k, n, m) == (4096, 4096, 64):
                    records.append({**rec, "status": "mismatch", "rel_err": 0.4})
                else:
                    speedup = (small or large) * (1 - t) + large * t + 0.05 * math.sin(i + k / 1000)
                    records.append({**rec, "status": "ok", "us": fp16_us / speedup, "speedup_vs_fp16": speedup})
    return {
        "machine": {"device_name": "Synthetic GPU (selftest)", "torch": "x.y", "cuda": "z"},
        "config": {"shapes": [list(s) for s in common.LINEAR_SHAPES]},
        "methods": {"fp16": "F.linear fp16 (cuBLAS)", **{key: key for key in curves}},
        "results": records,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", help="a matmul_<card>.json written by bench_matmul.py")
    parser.add_argument("--out", help="PNG path (default: the JSON path with .png, or /tmp for --selftest)")
    parser.add_argument("--selftest", action="store_true", help="plot synthetic numbers (no GPU needed)")
    args = parser.parse_args(argv)
    if args.selftest:
        path = args.out or "/tmp/int8q_plot_selftest.png"
        plot_matmul(synthetic_payload(), path)
    elif args.results:
        with open(args.results) as f:
            payload = json.load(f)
        path = args.out or os.path.splitext(args.results)[0] + ".png"
        plot_matmul(payload, path)
    else:
        parser.error("give a results JSON or --selftest")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
