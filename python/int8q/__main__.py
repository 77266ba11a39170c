"""The int8q command line: ``demo``, ``calibrate`` and ``eval`` (``python -m int8q --help``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .calibration import CALIBRATION_METHODS

__all__ = ["main"]


def _device(name: Optional[str]) -> torch.device:
    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _fidelity_batches(tokenizer, texts: List[str], causal: bool, args: argparse.Namespace):
    from .evaluation import causal_lm_batches, encoder_batches

    if causal:
        return causal_lm_batches(tokenizer, texts, samples=args.samples or 32, seq_len=args.seq_len)
    return encoder_batches(tokenizer, texts[: args.samples] if args.samples else texts, max_length=args.seq_len)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.device, builtin=args.builtin)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .data import read_texts
    from .hf_models import load_hf_model
    from .quantize import quantize_model
    from .serialization import save_quantized

    device = _device(args.device)
    model, tokenizer, causal = load_hf_model(args.model, dtype=torch.float32, device=device)
    texts = read_texts(args.data)
    if not texts:
        raise SystemExit(f"int8q calibrate: {args.data} holds no text")
    needs_data = args.act == "static" or args.smooth_alpha is not None
    batches = _fidelity_batches(tokenizer, texts, causal, args) if needs_data else None
    quantize_model(
        model,
        act=args.act,
        calib_data=batches,
        smooth_alpha=args.smooth_alpha,
        per_channel=not args.per_tensor_weights,
        skip=tuple(args.skip),
        method=args.method if needs_data else None,
    )
    metadata = {
        "model": str(Path(args.model).resolve()),
        "causal_lm": causal,
        "act": args.act,
        "smooth_alpha": args.smooth_alpha,
        "method": args.method,
        "samples": args.samples,
        "seq_len": args.seq_len,
        "calibration_data": str(Path(args.data).resolve()),
    }
    out = save_quantized(model, args.out, metadata=metadata)
    print(f"int8q calibrate: wrote {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .data import read_texts
    from .evaluation import embedding_fidelity, perplexity, sentence_embeddings, time_model
    from .hf_models import load_hf_model
    from .serialization import load_quantized

    from .serialization import CONFIG_NAME

    if not (Path(args.quantized) / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{Path(args.quantized) / CONFIG_NAME} not found; run 'int8q calibrate' first")
    device = _device(args.device)
    # The CUDA kernels take half-precision activations; the CPU runs float32.
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    float_model, tokenizer, causal = load_hf_model(args.model, dtype=dtype, device=device)
    quantized, _, _ = load_hf_model(args.model, dtype=dtype, device=device)
    load_quantized(quantized, args.quantized)
    texts = read_texts(args.data)
    if not texts:
        raise SystemExit(f"int8q eval: {args.data} holds no text")
    batches = _fidelity_batches(tokenizer, texts, causal, args)
    dtype_name = str(dtype).replace("torch.", "")
    print(f"int8q eval: {args.model} against {args.quantized} on {device} ({dtype_name} activations)")
    if causal:
        ppl_float, ppl_int8 = perplexity(float_model, batches), perplexity(quantized, batches)
        tokens = sum(b["input_ids"].numel() for b in batches)
        print(
            f"  perplexity over {tokens} tokens: {dtype_name} {ppl_float:.4f}, "
            f"int8 {ppl_int8:.4f} ({ppl_int8 / ppl_float - 1:+.2%})"
        )
    else:
        reference = sentence_embeddings(float_model, batches)
        fidelity = embedding_fidelity(reference, sentence_embeddings(quantized, batches))
        print(
            f"  embeddings of {len(reference)} texts: mean cosine "
            f"{fidelity.mean_cosine:.5f}, min cosine {fidelity.min_cosine:.5f}, "
            f"nearest-neighbour agreement {fidelity.nn_agreement:.3f}"
        )
    repeats = args.repeats if args.repeats else (10 if device.type == "cuda" else 1)
    t_float = time_model(float_model, batches, repeats=repeats)
    t_int8 = time_model(quantized, batches, repeats=repeats)
    print(f"  time per pass: {dtype_name} {t_float * 1e3:.1f} ms, int8 {t_int8 * 1e3:.1f} ms ({t_float / t_int8:.2f}x)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="int8q", description="W8A8 int8 inference for PyTorch models.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="quantize a model and print accuracy and speed against float")
    demo.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    demo.add_argument(
        "--builtin", action="store_true", help="use the built-in block even if all-MiniLM-L6-v2 is installed"
    )
    demo.set_defaults(run=_cmd_demo)

    def data_options(p: argparse.ArgumentParser, samples: Optional[int], samples_help: str, seq_len: int) -> None:
        p.add_argument("--model", required=True, help="local transformers model directory")
        p.add_argument("--data", required=True, help="text file (one text per line) or .jsonl with a 'text' field")
        p.add_argument("--samples", type=int, default=samples, help=samples_help)
        p.add_argument("--seq-len", type=int, default=seq_len, help="tokens per window / max tokens per text")
        p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")

    cal = commands.add_parser("calibrate", help="calibrate, quantize and save a local transformers model")
    data_options(cal, 128, "windows (causal LM) or texts (encoder) to calibrate on (default: 128)", 512)
    cal.add_argument("--out", required=True, help="output directory (int8q_config.json + model.safetensors)")
    cal.add_argument("--act", choices=("dynamic", "static"), default="static", help="activations (default: static)")
    cal.add_argument("--smooth-alpha", type=float, default=None, help="apply SmoothQuant with this alpha (e.g. 0.8)")
    cal.add_argument("--method", choices=CALIBRATION_METHODS, default="absmax", help="static range (default: absmax)")
    cal.add_argument("--per-tensor-weights", action="store_true", help="one weight scale per layer, not per channel")
    cal.add_argument("--skip", nargs="*", default=["lm_head"], help="module name patterns kept in float (lm_head)")
    cal.set_defaults(run=_cmd_calibrate)

    ev = commands.add_parser("eval", help="compare a saved quantized model with its float original")
    data_options(ev, None, "windows (causal LM; default 32) or texts (encoder; default all) to evaluate on", 512)
    ev.add_argument("--quantized", required=True, help="directory written by 'int8q calibrate' or int8q.save_quantized")
    ev.add_argument("--repeats", type=int, default=None, help="timed passes (median); default 10 on GPU, 1 on CPU")
    ev.set_defaults(run=_cmd_eval)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m int8q`` and the ``int8q`` console script."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError) as e:
        # Bad paths and files that do not match the model: a message, not a traceback.
        print(f"int8q {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
