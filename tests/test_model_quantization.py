"""quantize_model, SmoothQuant folds in transformers models, save_quantized / load_quantized."""

import copy
import json
import re
import warnings

import pytest
import torch
from torch import nn

import int8q
from int8q.calibration import calibrate
from int8q.quantize import quantize_model
from int8q.serialization import CONFIG_NAME, TENSORS_NAME, load_quantized, save_quantized
from int8q.smooth import find_smoothing_groups, smooth_model

transformers = pytest.importorskip("transformers")

VOCAB = 256


def tiny_llama(seed=0, *, tie=False, layers=2, intermediate=128):
    """A random LLaMA with grouped-query attention and LLM-like outlier channels."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[torch.randperm(64, generator=generator)[:3]] *= 25.0
            layer.mlp.up_proj.weight[torch.randperm(intermediate, generator=generator)[:3]] *= 10.0
    return model


def token_batches(n, seed, batch=2, length=24):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, length), generator=generator) for _ in range(n)]


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


def quant_layers(model):
    return {n for n, m in model.named_modules() if isinstance(m, int8q.QuantLinear)}


def float_linears(model):
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@pytest.fixture(scope="module")
def llama_case():
    model = tiny_llama()
    stats = calibrate(model, token_batches(4, seed=1), progress=False)
    return model, stats, token_batches(1, seed=2, batch=3)[0]


# --- quantize_model -----------------------------------------------------------------------


def test_static_or_smoothing_without_calibration_data_is_a_clear_error():
    model = tiny_llama()
    with pytest.raises(ValueError, match="act='static' needs calibration data"):
        quantize_model(model, act="static")
    with pytest.raises(ValueError, match="smooth_alpha needs calibration data"):
        quantize_model(model, smooth_alpha=0.5)
    with pytest.raises(ValueError, match="act must be"):
        quantize_model(model, act="int4")
    with pytest.raises(ValueError, match="smooth_alpha must be in"):
        quantize_model(model, calib_data=[], smooth_alpha=2.0)
    assert not quant_layers(model), "a rejected call leaves the model alone"


def test_dynamic_quantizes_every_linear_but_the_lm_head_and_warns_once(llama_case):
    model, _, ids = llama_case
    quantized = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="stay in float") as record:
        assert quantize_model(quantized) is quantized
    assert len([w for w in record if "stay in float" in str(w.message)]) == 1
    assert "lm_head: skipped by pattern" in str(record[0].message)
    assert float_linears(quantized) == {"lm_head"}
    assert len(quant_layers(quantized)) == 14
    assert rel_error(logits(quantized, ids), logits(model, ids)) < 0.1  # outlier channels, unsmoothed


def test_skip_patterns_glob_suffix_and_regex(llama_case):
    model, _, _ = llama_case
    quantized = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="stay in float") as record:
        quantize_model(quantized, skip=("lm_head", "mlp.*", re.compile(r"layers\.1\.self_attn\.[qk]_proj")))
    kept = float_linears(quantized)
    assert kept == {"lm_head", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"} | {
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")
    }
    message = str(record[0].message)
    assert all(name in message for name in kept)


def test_a_single_skip_pattern_may_be_a_plain_string(llama_case):
    quantized = copy.deepcopy(llama_case[0])
    with pytest.warns(UserWarning, match="stay in float"):
        quantize_model(quantized, skip="*proj")
    every = {n for n, m in llama_case[0].named_modules() if isinstance(m, nn.Linear)}
    assert float_linears(quantized) == every - {"lm_head"}  # the pattern replaced the default


def test_layers_the_kernels_cannot_take_stay_float():
    model = nn.ModuleDict({
        "wide": nn.Linear(131072, 2, bias=False),
        "f64": nn.Linear(8, 8).double(),
        "ok": nn.Linear(8, 8),
    })
    with pytest.warns(UserWarning) as record:
        quantize_model(model, skip=())
    assert quant_layers(model) == {"ok"}
    message = "\n".join(str(w.message) for w in record)
    assert "wide: in_features 131072 > 131071" in message and "f64: weight dtype torch.float64" in message
    assert len(record) == 1


def test_static_layers_that_calibration_never_reached_stay_float():
    model = nn.ModuleDict({"used": nn.Linear(8, 8), "unused": nn.Linear(8, 8)})
    model.forward = lambda x: model["used"](x)
    with pytest.warns(UserWarning, match="unused: never called during calibration"):
        quantize_model(model, act="static", calib_data=[torch.randn(4, 8)], progress=False)
    assert quant_layers(model) == {"used"}
    assert model["used"].act == "static"


def test_calib_stats_and_method_choices(llama_case):
    model, stats, ids = llama_case
    with pytest.raises(ValueError, match="calib_data or calib_stats, not both"):
        quantize_model(copy.deepcopy(model), act="static", calib_data=[ids], calib_stats=stats)
    with pytest.raises(ValueError, match="calib_stats carry"):
        quantize_model(copy.deepcopy(model), act="static", calib_stats=stats, method="mse")
    with pytest.warns(UserWarning):
        q = quantize_model(copy.deepcopy(model), act="static", calib_data=token_batches(2, seed=1),
                           method="percentile", percentile=99.9, progress=False)
    assert all(q.get_submodule(n).act == "static" for n in quant_layers(q))


def test_static_uses_a_shift_where_the_range_is_one_sided():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    with pytest.warns(UserWarning):
        quantize_model(model, act="static", calib_data=[torch.randn(64, 16)], skip=("0",), progress=False)
    assert model[2].shifted  # ReLU outputs are >= 0: a symmetric range would waste half the codes


# --- SmoothQuant folds in real transformers architectures ---------------------------------


def _assert_fold_is_exact(model, inputs, expected_consumers):
    stats = calibrate(model, [inputs], progress=False)
    run = (lambda m: m(**inputs)) if isinstance(inputs, dict) else (lambda m: m(inputs))
    with torch.no_grad():
        before = run(model)[0].float()
        factors, _ = smooth_model(model, stats, 0.8)
        after = run(model)[0].float()
    assert sorted(factors) == sorted(expected_consumers)
    assert any((s - 1).abs().max() > 0.5 for s in factors.values()), "the factors are not trivial"
    torch.testing.assert_close(after, before, rtol=2e-4, atol=2e-4)


def test_llama_folds_norms_grouped_value_heads_and_up_proj_exactly():
    model = tiny_llama()
    groups = find_smoothing_groups(model)
    assert [g.producer for g in groups[:4]] == [
        "model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
        "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.up_proj",
    ]
    assert groups[2].channel_map is not None  # 2 key/value heads serve 4 query heads
    consumers = [f"model.layers.{i}.{p}" for i in range(2) for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    _assert_fold_is_exact(model, token_batches(1, seed=3)[0], consumers)


def test_opt_folds_pre_norms_value_and_relu_mlp_exactly():
    torch.manual_seed(0)
    config = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                    num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=64)
    model = transformers.OPTForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.self_attn_layer_norm.weight[:2] *= 20
    consumers = [f"model.decoder.layers.{i}.{p}" for i in range(2) for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")]
    _assert_fold_is_exact(model, token_batches(1, seed=3)[0], consumers)


def test_bert_folds_only_value_into_attention_output():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=64)
    model = transformers.BertModel(config).eval()
    ids = token_batches(1, seed=3)[0]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    # BERT's LayerNorms follow the residual add: folding into them would change the model.
    _assert_fold_is_exact(model, inputs, [f"encoder.layer.{i}.attention.output.dense" for i in range(2)])


def tiny_bert(seed=0):
    """A random BERT whose post-residual LayerNorms carry outlier channels (as trained ones do)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=64)
    model = transformers.BertModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norms = [model.embeddings.LayerNorm] + [layer.attention.output.LayerNorm for layer in model.encoder.layer]
        for norm in norms:
            norm.weight[torch.randperm(64, generator=generator)[:2]] *= 50.0
    return model


def bert_inputs(seed, batch=2, length=24):
    ids = token_batches(1, seed=seed, batch=batch, length=length)[0]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_bert_smooths_unfoldable_layers_inside_quantlinear(tmp_path):
    """BERT has one fold per block; SmoothQuant reaches every other layer through QuantLinear."""
    model = tiny_bert()
    calib = [bert_inputs(seed) for seed in (1, 2, 3)]
    inputs = bert_inputs(4, batch=3)
    stats = calibrate(model, calib, progress=False)

    def hidden(m):
        with torch.no_grad():
            return m(**inputs).last_hidden_state.float()

    reference = hidden(model)
    plain = quantize_model(copy.deepcopy(model), act="static", calib_stats=stats, skip=())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer is smoothed: nothing to warn about
        smoothed = quantize_model(copy.deepcopy(model), act="static", calib_stats=stats, smooth_alpha=0.8, skip=())
    layers = {n: m for n, m in smoothed.named_modules() if isinstance(m, int8q.QuantLinear)}
    folded = {f"encoder.layer.{i}.attention.output.dense" for i in range(2)}
    assert len(layers) == 2 * 6 + 1  # q, k, v, attention output, intermediate, output; the pooler
    assert {n for n, m in layers.items() if not m.smoothed} == folded
    assert all(m.smooth.dtype == torch.float32 and (m.smooth > 0).all() for m in layers.values() if m.smoothed)
    assert "smoothed=True" in repr(smoothed.encoder.layer[0].intermediate.dense)
    err_plain, err_smooth = rel_error(hidden(plain), reference), rel_error(hidden(smoothed), reference)
    assert err_smooth < 0.5 * err_plain, (err_smooth, err_plain)

    dynamic = quantize_model(copy.deepcopy(model), act="dynamic", calib_stats=stats, smooth_alpha=0.8, skip=())
    assert all(m.smoothed for n, m in dynamic.named_modules() if isinstance(m, int8q.QuantLinear) and n not in folded)
    assert rel_error(hidden(dynamic), reference) < 0.05

    save_quantized(smoothed, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert {n for n, c in config["layers"].items() if c["smoothed"]} == set(layers) - folded
    fresh = load_quantized(tiny_bert(seed=7), tmp_path)
    smoothed_layers = {n for n, m in fresh.named_modules() if isinstance(m, int8q.QuantLinear) and m.smoothed}
    assert smoothed_layers == set(layers) - folded
    assert torch.equal(hidden(fresh), hidden(smoothed))


def test_layers_calibration_never_reached_are_quantized_unsmoothed_with_one_warning():
    model = nn.ModuleDict({"used": nn.Linear(8, 8), "unused": nn.Linear(8, 8)})
    model.forward = lambda x: model["used"](x)
    with pytest.warns(UserWarning, match="quantized without SmoothQuant") as record:
        quantize_model(model, act="dynamic", calib_data=[torch.randn(4, 8)], smooth_alpha=0.5, skip=(),
                       progress=False)
    assert len(record) == 1 and "  unused" in str(record[0].message) and "  used" not in str(record[0].message)
    assert model["used"].smoothed and not model["unused"].smoothed


def test_an_older_config_without_smoothed_loads(saved):
    quantized, path, ids = saved
    config = json.loads((path / CONFIG_NAME).read_text())
    for layer in config["layers"].values():
        del layer["smoothed"]
    (path / CONFIG_NAME).write_text(json.dumps(config))
    fresh = load_quantized(tiny_llama(seed=9), path)
    assert torch.equal(logits(fresh, ids), logits(quantized, ids))


def test_load_rejects_nonpositive_smooth(tmp_path):
    model = tiny_bert()
    stats = calibrate(model, [bert_inputs(1)], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        quantize_model(model, act="static", calib_stats=stats, smooth_alpha=0.8)
    save_quantized(model, tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / TENSORS_NAME))
    tensors["encoder.layer.0.attention.self.query.smooth"][5] = 0.0
    save_file(tensors, str(tmp_path / TENSORS_NAME))
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["sha256"] = int8q.serialization._sha256(tmp_path / TENSORS_NAME)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    _untouched(tiny_bert, tmp_path, ValueError, "query.smooth: the SmoothQuant multipliers must be finite and positive")


def test_static_smoothquant_decoder_end_to_end(llama_case, tmp_path):
    """Calibrate, quantize (static + smoothing), generate, save, reload into a fresh model."""
    model, stats, ids = llama_case
    reference = logits(model, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = quantize_model(copy.deepcopy(model), act="static", calib_stats=stats)
        smoothed = quantize_model(copy.deepcopy(model), act="static", calib_stats=stats, smooth_alpha=0.8)
    err_plain = rel_error(logits(plain, ids), reference)
    err_smooth = rel_error(logits(smoothed, ids), reference)
    assert err_smooth < 0.06
    assert err_smooth < 0.5 * err_plain, (err_smooth, err_plain)
    top1 = (logits(smoothed, ids).argmax(-1) == reference.argmax(-1)).float().mean()
    assert top1 > 0.9

    prompt = ids[:1, :8]
    generated = smoothed.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 14)
    assert torch.equal(generated[:, :8], prompt)

    save_quantized(smoothed, tmp_path)
    fresh = tiny_llama(seed=123)  # same architecture, other weights: everything comes from the file
    load_quantized(fresh, tmp_path)
    assert quant_layers(fresh) == quant_layers(smoothed)
    assert torch.equal(logits(fresh, ids), logits(smoothed, ids))
    assert torch.equal(fresh.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0), generated)


# --- save_quantized / load_quantized ------------------------------------------------------


@pytest.fixture()
def saved(llama_case, tmp_path):
    model, stats, ids = llama_case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        quantized = quantize_model(copy.deepcopy(model), act="static", calib_stats=stats, smooth_alpha=0.5)
    save_quantized(quantized, tmp_path, metadata={"note": "test"})
    return quantized, tmp_path, ids


def test_config_lists_every_layer_with_its_settings(saved):
    quantized, path, _ = saved
    config = json.loads((path / CONFIG_NAME).read_text())
    assert config["version"] == 1 and config["metadata"] == {"note": "test"}
    assert set(config["layers"]) == quant_layers(quantized)
    layer = config["layers"]["model.layers.0.mlp.down_proj"]
    assert layer == {"in_features": 128, "out_features": 64, "bias": False, "act": "static",
                     "per_channel": True, "shifted": quantized.model.layers[0].mlp.down_proj.shifted,
                     "smoothed": False}  # LLaMA: every layer's 1/s is folded


def test_tied_embeddings_round_trip(tmp_path):
    model = tiny_llama(tie=True)
    ids = token_batches(1, seed=2)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        quantize_model(model, act="dynamic")
    save_quantized(model, tmp_path)
    aliases = json.loads((tmp_path / CONFIG_NAME).read_text())["aliases"]
    assert aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    fresh = load_quantized(tiny_llama(seed=5, tie=True), tmp_path)
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()
    assert torch.equal(logits(fresh, ids), logits(model, ids))


def test_save_needs_a_quantized_model(tmp_path):
    with pytest.raises(ValueError, match="no QuantLinear"):
        save_quantized(tiny_llama(), tmp_path)


def _untouched(build, path, error, match):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        load_quantized(model, path)
    assert not quant_layers(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_mismatched_architecture_fails_and_leaves_the_model_untouched(saved):
    _, path, _ = saved
    _untouched(lambda: tiny_llama(layers=1), path, ValueError, "model.layers.1.self_attn.q_proj: no such module")
    _untouched(lambda: tiny_llama(intermediate=96), path, ValueError, r"\(in, out, bias\) is \(64, 96, False\)")


def test_missing_or_extra_tensors_fail_before_any_change(saved):
    _, path, _ = saved
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / TENSORS_NAME))
    del tensors["model.norm.weight"]
    save_file(tensors, str(path / TENSORS_NAME))
    config = json.loads((path / CONFIG_NAME).read_text())
    config["sha256"] = int8q.serialization._sha256(path / TENSORS_NAME)
    (path / CONFIG_NAME).write_text(json.dumps(config))
    _untouched(tiny_llama, path, ValueError, r"missing from the file: \['model.norm.weight'\]")


@pytest.mark.parametrize("damage", ["truncate", "flip", "version", "not_json", "no_config"])
def test_damaged_files_fail_clearly_and_leave_the_model_untouched(saved, damage):
    _, path, _ = saved
    tensors, config = path / TENSORS_NAME, path / CONFIG_NAME
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
        expected = (ValueError, "truncated, corrupted")
    elif damage == "flip":
        data = bytearray(tensors.read_bytes())
        data[-10] ^= 0xFF
        tensors.write_bytes(bytes(data))
        expected = (ValueError, "truncated, corrupted")
    elif damage == "version":
        config.write_text(config.read_text().replace('"version": 1', '"version": 99'))
        expected = (ValueError, "format version 99")
    elif damage == "not_json":
        config.write_text("{ not json")
        expected = (ValueError, "not valid JSON")
    else:
        config.unlink()
        expected = (FileNotFoundError, "int8q_config.json not found")
    _untouched(tiny_llama, path, *expected)
