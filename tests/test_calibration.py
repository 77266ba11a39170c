"""int8q.calibrate, the static activation parameters it yields, and SmoothQuant's folds."""

import copy

import pytest
import torch
from torch import nn

import int8q
from int8q.calibration import ActivationStats, calibrate, range_to_act_params
from int8q.smooth import find_smoothing_groups, smooth_model, smoothing_factors


class TwoLayer(nn.Module):
    def __init__(self, k=16, n=24):
        super().__init__()
        self.fc1 = nn.Linear(k, n)
        self.fc2 = nn.Linear(n, 8)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x, scale=1.0):
        return self.fc2(torch.relu(self.dropout(self.fc1(x * scale))))


def _stats(lo, hi, method="absmax", sample=None):
    return ActivationStats(torch.tensor(lo), torch.tensor(hi), rows=1, sample=sample, method=method)


def test_calibrate_records_per_channel_min_max_of_every_linear():
    torch.manual_seed(0)
    model = TwoLayer()
    batches = [torch.randn(3, 5, 16) for _ in range(4)]
    stats = calibrate(model, batches, progress=False)
    assert set(stats) == {"fc1", "fc2"}
    seen = torch.cat([b.reshape(-1, 16) for b in batches])
    torch.testing.assert_close(stats["fc1"].channel_min, seen.amin(0))
    torch.testing.assert_close(stats["fc1"].channel_max, seen.amax(0))
    torch.testing.assert_close(stats["fc1"].absmax, seen.abs().amax(0))
    assert stats["fc1"].rows == 60
    assert stats["fc2"].channel_min.min() >= 0  # after ReLU, and dropout was off (eval mode)
    assert stats["fc1"].clip_range() == (float(seen.min()), float(seen.max()))


def test_calibrate_accepts_tensor_tuple_and_dict_batches_and_restores_the_model():
    model = TwoLayer().train()
    x = torch.randn(2, 16)
    stats = calibrate(model, [x, (x, 2.0), {"x": x, "scale": 3.0}], progress=False)
    assert stats["fc1"].rows == 6
    torch.testing.assert_close(stats["fc1"].channel_max, (x * 3.0).amax(0).maximum(x.amax(0)))
    assert model.training, "the training flag is restored"
    assert not model.fc1._forward_pre_hooks and not model.fc2._forward_pre_hooks, "hooks are removed"


def test_calibrate_sees_inputs_passed_by_keyword():
    linear = nn.Linear(4, 2)
    model = nn.Module()
    model.linear = linear
    model.forward = lambda x: linear(input=x)
    stats = calibrate(model, [torch.ones(3, 4)], progress=False)
    assert stats["linear"].rows == 3


def test_calibrate_runs_without_grad_and_removes_hooks_on_error():
    model = TwoLayer()
    seen_grad = []
    model.fc1.register_forward_hook(lambda m, a, out: seen_grad.append(out.requires_grad))
    calibrate(model, [torch.randn(2, 16)], progress=False)
    assert seen_grad == [False]
    with pytest.raises(TypeError, match="calibration batch"):
        calibrate(model, ["not a tensor"], progress=False)
    assert not model.fc1._forward_pre_hooks


def test_calibrate_rejects_bad_arguments_and_non_finite_inputs():
    model = TwoLayer()
    with pytest.raises(ValueError, match="method"):
        calibrate(model, [], method="minmax")
    with pytest.raises(ValueError, match="percentile"):
        calibrate(model, [], method="percentile", percentile=20)
    with pytest.raises(ValueError, match="not nn.Linear"):
        calibrate(model, [], layers=["dropout"])
    x = torch.randn(2, 16)
    x[0, 3] = float("inf")
    with pytest.raises(ValueError, match="'fc1'.*NaN or Inf"):
        calibrate(model, [x], progress=False)


def test_calibrate_layers_subset_and_unreached_layers():
    model = nn.ModuleDict({"used": nn.Linear(4, 4), "unused": nn.Linear(4, 4)})
    model.forward = lambda x: model["used"](x)
    stats = calibrate(model, [torch.randn(3, 4)], progress=False)
    assert list(stats) == ["used"], "a layer that never ran has no statistics"
    stats = calibrate(model, [torch.randn(3, 4)], layers=["unused"], progress=False)
    assert stats == {}


def test_sample_stays_bounded_and_is_reproducible():
    model = TwoLayer()
    batches = [torch.randn(64, 16) for _ in range(10)]
    a = calibrate(model, batches, method="percentile", sample_size=320, progress=False)
    b = calibrate(model, batches, method="percentile", sample_size=320, progress=False)
    assert a["fc1"].sample.shape == (20, 16)  # 320 values // 16 channels
    assert a["fc2"].sample.shape == (13, 24)
    torch.testing.assert_close(a["fc1"].sample, b["fc1"].sample)
    rows = torch.cat(batches)
    assert all(any(torch.equal(r, s) for s in rows) for r in a["fc1"].sample), "sample rows are real rows"


def test_percentile_clips_rare_outliers():
    torch.manual_seed(0)
    x = torch.randn(4096, 8)
    x[::512, 0] = 60.0  # 0.02% of the values
    model = nn.Linear(8, 4)
    assert calibrate(model, [x], progress=False)[""].clip_range()[1] == 60.0
    lo, hi = calibrate(model, [x], method="percentile", percentile=99.9, progress=False)[""].clip_range()
    assert -5 < lo < 0 < hi < 5


def test_mse_finds_the_known_optimal_clip_of_a_laplace_distribution():
    # For 8-bit codes the MSE-optimal clip of Laplace(0, b) data is about 9.9 b, inside the
    # range (about 12 b) that 2**18 samples reach.
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((1 << 15, 8))
    model = nn.Linear(8, 4)
    lo, hi = calibrate(model, [x], progress=False)[""].clip_range()
    mlo, mhi = calibrate(model, [x], method="mse", progress=False)[""].clip_range()
    assert lo < mlo < 0 < mhi < hi
    assert 8.5 < max(-mlo, mhi) < 11.0 < max(-lo, hi)


def test_mse_keeps_the_full_range_of_uniform_data():
    x = torch.linspace(-1, 1, 2001).reshape(-1, 1).repeat(1, 4)
    stats = calibrate(nn.Linear(4, 2), [x], method="mse", progress=False)[""]
    lo, hi = stats.clip_range()
    assert lo <= -0.95 and hi >= 0.95


@pytest.mark.parametrize("lo,hi", [(-0.17, 25.0), (0.0, 3.0), (-3.0, -0.5), (2.0, 9.0)])
def test_shifted_params_map_the_range_onto_all_256_codes(lo, hi):
    scale, shift = range_to_act_params(lo, hi)
    assert shift is not None
    x = torch.tensor([[min(lo, 0.0), max(hi, 0.0)]])
    q, _ = int8q.quantize_activation(x, torch.tensor([scale]), torch.tensor([shift]))
    assert q.tolist() == [[-128, 127]]
    dequant = (q.float() * scale + shift)
    torch.testing.assert_close(dequant, x, atol=scale / 2 + 1e-6, rtol=0)


@pytest.mark.parametrize("lo,hi", [(-2.0, 2.0), (-3.0, 2.5), (-1e-3, 1e-3)])
def test_centred_ranges_are_symmetric(lo, hi):
    scale, shift = range_to_act_params(lo, hi)
    assert shift is None
    assert scale == pytest.approx(max(-lo, hi) / 127)


def test_all_zero_inputs_give_a_valid_scale():
    assert range_to_act_params(0.0, 0.0) == (1.0, None)


def test_smoothed_stats_equal_a_new_calibration_of_the_smoothed_inputs():
    torch.manual_seed(0)
    x = torch.randn(50, 16) * torch.linspace(0.1, 20, 16)
    s = torch.rand(16) + 0.5
    model = nn.Linear(16, 4)
    before = calibrate(model, [x], method="mse", progress=False)[""]
    after = calibrate(model, [x / s], method="mse", progress=False)[""]
    transformed = before.smoothed(s)
    torch.testing.assert_close(transformed.channel_min, after.channel_min)
    torch.testing.assert_close(transformed.channel_max, after.channel_max)
    torch.testing.assert_close(transformed.sample, after.sample)
    assert transformed.act_params() == pytest.approx(after.act_params())


def test_smoothing_factors_formula_and_zero_guards():
    act = torch.tensor([4.0, 0.0, 9.0, 1.0])
    weight = torch.tensor([1.0, 2.0, 0.0, 4.0])
    s = smoothing_factors(act, weight, 0.5)
    torch.testing.assert_close(s, torch.tensor([2.0, 1.0, 1.0, 0.5]))
    torch.testing.assert_close(smoothing_factors(act, weight, 1.0)[0], torch.tensor(4.0))
    with pytest.raises(ValueError, match="alpha"):
        smoothing_factors(act, weight, 1.5)


def test_smoothing_balances_activation_and_weight_ranges():
    act = torch.tensor([100.0, 1.0])
    weight = torch.tensor([0.5, 0.5])
    s = smoothing_factors(act, weight, 0.5)
    torch.testing.assert_close(act / s, weight * s)  # alpha 0.5 equalises the two maxima


class PreNormBlock(nn.Module):
    """LLaMA-style names, so smooth.py folds into its norms and linears."""

    def __init__(self, h=16):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(h)
        self.self_attn = nn.Module()
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self.self_attn, p, nn.Linear(h, h))
        self.post_attention_layernorm = nn.RMSNorm(h)
        self.mlp = nn.Module()
        self.mlp.gate_proj, self.mlp.up_proj, self.mlp.down_proj = nn.Linear(h, 32), nn.Linear(h, 32), nn.Linear(32, h)

    def forward(self, x):
        a = self.self_attn
        n = self.input_layernorm(x)
        attn = torch.softmax(a.q_proj(n) @ a.k_proj(n).transpose(-1, -2), dim=-1) @ a.v_proj(n)
        h = x + a.o_proj(attn)
        m = self.post_attention_layernorm(h)
        return h + self.mlp.down_proj(torch.nn.functional.silu(self.mlp.gate_proj(m)) * self.mlp.up_proj(m))


def test_smooth_model_folds_exactly_and_reports_what_it_could_not_smooth():
    torch.manual_seed(0)
    model = nn.Sequential(PreNormBlock(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].input_layernorm.weight.mul_(torch.linspace(0.5, 30, 16))
    x = torch.randn(2, 7, 16)
    stats = calibrate(model, [x], progress=False)
    expected = model(x)
    smoothed = copy.deepcopy(model)
    factors, unsmoothed = smooth_model(smoothed, stats, 0.8)
    assert set(factors) == {f"0.{p}" for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert unsmoothed == ["1"]
    torch.testing.assert_close(smoothed(x), expected, rtol=1e-4, atol=1e-4)
    # The new inputs of q_proj really are x / s.
    after = calibrate(smoothed, [x], progress=False)
    for name, s in factors.items():
        torch.testing.assert_close(after[name].absmax, stats[name].smoothed(s).absmax, rtol=1e-4, atol=1e-5)
    assert after["0.self_attn.q_proj"].absmax.max() < stats["0.self_attn.q_proj"].absmax.max()


def test_find_smoothing_groups_skips_norms_it_cannot_fold_into():
    class ScaledNorm(nn.Module):  # an unknown norm: (1 + weight) style, not foldable by weight / s
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(16))

        def forward(self, x):
            return x * (1 + self.weight)

    block = PreNormBlock()
    block.input_layernorm = ScaledNorm()
    producers = [g.producer for g in find_smoothing_groups(block)]
    assert producers == ["post_attention_layernorm", "self_attn.v_proj", "mlp.up_proj"]
