"""How close a quantized model stays to its float original, and how fast each runs.

Sentence encoders are compared by their mean-pooled, L2-normalised embeddings (cosine
similarity per sentence; agreement of each sentence's nearest neighbour within the set),
causal language models by perplexity. Batches come from a transformers tokenizer.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .calibration import model_device, run_batch

__all__ = [
    "EmbeddingFidelity",
    "causal_lm_batches",
    "embedding_fidelity",
    "encoder_batches",
    "perplexity",
    "sentence_embeddings",
    "time_model",
]


def encoder_batches(
    tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 128
) -> List[Dict[str, Tensor]]:
    """Tokenized, padded batches of ``texts`` in order (keyword inputs for an encoder)."""
    return [
        dict(
            tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
        )
        for i in range(0, len(texts), batch_size)
    ]


def causal_lm_batches(
    tokenizer: Any, texts: Sequence[str], *, samples: int, seq_len: int, batch_size: int = 4
) -> List[Dict[str, Tensor]]:
    """``samples`` consecutive windows of ``seq_len`` tokens from the joined texts, batched.

    A text too short for one full window gives a single shorter window.
    """
    ids = tokenizer("\n\n".join(texts), return_tensors="pt")["input_ids"][0]
    if ids.numel() < 2:
        raise ValueError("int8q: the text gives fewer than 2 tokens; nothing to evaluate")
    window = min(seq_len, ids.numel())
    count = max(1, min(samples, ids.numel() // window))
    windows = ids[: count * window].reshape(count, window)
    return [{"input_ids": windows[i : i + batch_size]} for i in range(0, count, batch_size)]


@torch.no_grad()
def sentence_embeddings(model: nn.Module, batches: Iterable[Dict[str, Tensor]]) -> Tensor:
    """Mean-pooled (over the attention mask), L2-normalised last hidden states, float32 on CPU."""
    out = []
    for batch in batches:
        result = run_batch(model, batch)
        hidden = (result.last_hidden_state if hasattr(result, "last_hidden_state") else result[0]).float()
        mask = batch["attention_mask"].to(hidden.device).unsqueeze(-1).float()
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        out.append(F.normalize(pooled, dim=-1).cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class EmbeddingFidelity:
    """Cosine similarity of each candidate embedding to its reference, and retrieval agreement."""

    mean_cosine: float
    min_cosine: float
    nn_agreement: float  # share of sentences whose nearest other sentence is unchanged


def _nearest_neighbours(embeddings: Tensor) -> Tensor:
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(float("-inf"))
    return similarity.argmax(dim=1)


def embedding_fidelity(reference: Tensor, candidate: Tensor) -> EmbeddingFidelity:
    """Compare normalised ``[n, d]`` embeddings of the same ``n`` sentences."""
    reference, candidate = reference.float(), candidate.float()
    cosine = F.cosine_similarity(reference, candidate, dim=-1)
    agreement = (_nearest_neighbours(reference) == _nearest_neighbours(candidate)).float().mean()
    return EmbeddingFidelity(float(cosine.mean()), float(cosine.min()), float(agreement))


@torch.no_grad()
def perplexity(model: nn.Module, batches: Iterable[Dict[str, Tensor]]) -> float:
    """Token-level perplexity of a causal LM over ``batches`` of ``input_ids``."""
    total_loss, total_tokens = 0.0, 0
    for batch in batches:
        logits = run_batch(model, batch).logits.float()
        labels = batch["input_ids"].to(logits.device)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
        total_loss += float(loss)
        total_tokens += labels[:, 1:].numel()
    return float(torch.exp(torch.tensor(total_loss / total_tokens)))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_model(model: nn.Module, batches: Sequence[Any], *, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time in seconds of one forward pass over all ``batches``."""
    device = model_device(model) or torch.device("cpu")
    for batch in batches[:warmup]:
        run_batch(model, batch)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            run_batch(model, batch)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
