"""QuantLinear: accuracy against nn.Linear, state_dict round trip, torch.compile."""

import pytest
import torch
from torch import nn

import int8q
from int8q import QuantLinear

def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def float_dtypes(device):
    return [torch.float32] if device == "cpu" else [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_dynamic_close_to_linear(device, per_channel, bias):
    torch.manual_seed(0)
    for dtype in float_dtypes(device):
        linear = nn.Linear(256, 96, bias=bias).to(device=device, dtype=dtype)
        layer = QuantLinear.from_linear(linear, per_channel=per_channel)
        x = torch.randn(3, 5, 256, device=device, dtype=dtype)
        y = layer(x)
        assert y.shape == (3, 5, 96) and y.dtype == dtype
        assert rel_err(y, linear(x)) < 0.01


def test_static_and_shifted_close_to_linear(device):
    torch.manual_seed(1)
    dtype = float_dtypes(device)[0]
    linear = nn.Linear(128, 64).to(device=device, dtype=dtype)
    x = torch.randn(16, 128, device=device, dtype=dtype)
    absmax = x.abs().max().float()
    static = QuantLinear.from_linear(linear, act="static", act_scale=absmax / 127)
    assert rel_err(static(x), linear(x)) < 0.03
    # A range that is far from centred on zero: the shift keeps the code range in use.
    xs = x.abs() + 3.0
    lo, hi = xs.min().float(), xs.max().float()
    shifted = QuantLinear.from_linear(linear, act="static", act_scale=(hi - lo) / 255, act_shift=(hi + lo) / 2)
    plain = QuantLinear.from_linear(linear, act="static", act_scale=hi / 127)
    ref = linear(xs)
    assert rel_err(shifted(xs), ref) < rel_err(plain(xs), ref)
    assert rel_err(shifted(xs), ref) < 0.01


def test_matches_op_and_reference():
    torch.manual_seed(2)
    linear = nn.Linear(64, 32)
    layer = QuantLinear.from_linear(linear)
    x = torch.randn(7, 64)
    expected = int8q.reference.matmul(x, layer.qweight, layer.w_scale, bias=layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip(device):
    torch.manual_seed(3)
    dtype = float_dtypes(device)[0]
    linear = nn.Linear(48, 24).to(device=device, dtype=dtype)
    x = torch.randn(4, 48, device=device, dtype=dtype)
    for kwargs in ({}, {"act": "static", "act_scale": 0.02}, {"act": "static", "act_scale": 0.02, "act_shift": 0.1},
                   {"per_channel": False}):
        src = QuantLinear.from_linear(linear, **kwargs)
        fresh = QuantLinear(
            48, 24, act=kwargs.get("act", "dynamic"), per_channel=kwargs.get("per_channel", True),
            shifted="act_shift" in kwargs, device=device, dtype=dtype,
        )
        fresh.load_state_dict(src.state_dict())
        assert torch.equal(fresh(x), src(x))


def test_state_dict_mismatch_is_a_clear_error():
    src = QuantLinear.from_linear(nn.Linear(48, 24))
    with pytest.raises(RuntimeError, match="size mismatch"):
        QuantLinear(48, 32).load_state_dict(src.state_dict())
    with pytest.raises(RuntimeError, match="act_scale"):
        QuantLinear(48, 24, act="static").load_state_dict(src.state_dict())


def test_constructor_and_from_linear_errors():
    with pytest.raises(ValueError, match="act must be one of"):
        QuantLinear(8, 8, act="int4")
    with pytest.raises(ValueError, match="needs act_scale"):
        QuantLinear.from_linear(nn.Linear(8, 8), act="static")
    with pytest.raises(ValueError, match="finite and positive"):
        QuantLinear.from_linear(nn.Linear(8, 8), act="static", act_scale=float("nan"))
    with pytest.raises(ValueError, match="finite and positive"):
        QuantLinear.from_linear(nn.Linear(8, 8), act="static", act_scale=0.0)
    with pytest.raises(TypeError, match="expects an nn.Linear"):
        QuantLinear.from_linear(nn.Conv1d(8, 8, 1))


def test_extra_repr():
    layer = QuantLinear(16, 8, act="static", shifted=True)
    text = repr(layer)
    assert "in_features=16" in text and "out_features=8" in text
    assert "act=static" in text and "shifted=True" in text


def test_empty_batch():
    layer = QuantLinear.from_linear(nn.Linear(16, 8))
    assert layer(torch.randn(0, 16)).shape == (0, 8)


@pytest.mark.parametrize("act", ["dynamic", "static"])
def test_torch_compile_fullgraph_no_recompile_per_batch(device, act):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    dtype = float_dtypes(device)[0]
    kwargs = {"act_scale": 0.05} if act == "static" else {}
    model = nn.Sequential(
        QuantLinear.from_linear(nn.Linear(32, 64).to(device, dtype), act=act, **kwargs),
        nn.GELU(),
        QuantLinear.from_linear(nn.Linear(64, 16).to(device, dtype), act=act, **kwargs),
    )
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for batch in (2, 3, 5, 9):
        x = torch.randn(batch, 32, device=device, dtype=dtype)
        torch._dynamo.mark_dynamic(x, 0)
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    assert counter.frame_count == 1


# ----------------------------------------------------------------------------- smoothed


def _outlier_case(device, dtype, k=128, n=64, rows=32):
    """A Linear whose inputs carry outlier channels, and SmoothQuant's 1/s for it."""
    torch.manual_seed(4)
    linear = nn.Linear(k, n).to(device=device, dtype=dtype)
    x = torch.randn(rows, k)
    x[:, :3] *= 50.0
    s = x.abs().amax(dim=0) ** 0.8 / linear.weight.detach().float().cpu().abs().amax(dim=0) ** 0.2
    return linear, x.to(device=device, dtype=dtype), (1.0 / s).to(device)


def test_smoothed_from_linear_computes_the_same_function(device):
    dtype = float_dtypes(device)[0]
    linear, x, smooth = _outlier_case(device, dtype)
    weight = linear.weight.detach().clone()
    ref = linear(x)
    plain = QuantLinear.from_linear(linear, act="static", act_scale=x.abs().max().float() / 127)
    smoothed_x = x.float() * smooth
    layer = QuantLinear.from_linear(linear, act="static", act_scale=smoothed_x.abs().max() / 127, smooth=smooth)
    assert layer.smoothed and layer.smooth.dtype == torch.float32 and torch.equal(layer.smooth, smooth.float())
    assert rel_err(layer(x), ref) < 0.02
    assert rel_err(layer(x), ref) < 0.5 * rel_err(plain(x), ref)
    # qweight holds the weight columns divided by smooth; forward passes smooth to the op.
    qweight, w_scale = int8q.quantize_weight(linear.weight.detach().float() / smooth)
    assert torch.equal(layer.qweight, qweight) and torch.equal(layer.w_scale, w_scale)
    expected = int8q.matmul(x, qweight, w_scale, layer.act_scale, None, layer.bias, smooth.float())
    assert torch.equal(layer(x), expected)
    dynamic = QuantLinear.from_linear(linear, smooth=smooth)
    assert rel_err(dynamic(x), ref) < 0.01
    assert torch.equal(linear.weight, weight)  # the Linear is not modified


def test_shifted_layer_keeps_weight_sums(device):
    # The shift term's weight sums are computed once, not per call, and never go stale:
    # from_linear and load_state_dict recompute them; a direct write calls update_weight_sums.
    torch.manual_seed(0)
    dtype = float_dtypes(device)[0]
    linear = nn.Linear(96, 40).to(device=device, dtype=dtype)
    layer = QuantLinear.from_linear(linear, act="static", act_scale=0.05, act_shift=0.1)
    assert layer.w_sum.dtype == torch.int32
    assert torch.equal(layer.w_sum, layer.qweight.sum(1, dtype=torch.int32))
    assert "w_sum" not in layer.state_dict()  # derived from qweight: checkpoints are unchanged
    x = torch.randn(5, 96, device=device, dtype=dtype) + 0.2
    summed_per_call = int8q.matmul(x, layer.qweight, layer.w_scale, layer.act_scale, layer.act_shift, layer.bias)
    assert torch.equal(layer(x), summed_per_call)
    fresh = QuantLinear(96, 40, act="static", shifted=True, device=device, dtype=dtype)
    buffer = fresh.w_sum
    fresh.load_state_dict(layer.state_dict())
    assert fresh.w_sum is buffer and torch.equal(fresh.w_sum, layer.w_sum)  # updated in place
    assert torch.equal(fresh(x), layer(x))
    with torch.no_grad():
        fresh.qweight.neg_()
    fresh.update_weight_sums()
    assert torch.equal(fresh.w_sum, -layer.w_sum)
    assert QuantLinear(96, 40).w_sum is None and QuantLinear(96, 40, act="static").w_sum is None


def test_smoothed_state_dict_round_trip(device):
    dtype = float_dtypes(device)[0]
    linear, x, smooth = _outlier_case(device, dtype)
    for kwargs in ({}, {"act": "static", "act_scale": 0.05}, {"act": "static", "act_scale": 0.05, "act_shift": 0.1}):
        src = QuantLinear.from_linear(linear, smooth=smooth, **kwargs)
        assert "smooth" in src.state_dict()
        fresh = QuantLinear(128, 64, act=kwargs.get("act", "dynamic"), shifted="act_shift" in kwargs, smoothed=True,
                            device=device, dtype=dtype)
        fresh.load_state_dict(src.state_dict())
        assert torch.equal(fresh.smooth, src.smooth)
        assert torch.equal(fresh(x), src(x))
    smoothed_state = QuantLinear.from_linear(linear, smooth=smooth).state_dict()
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"smooth\""):
        QuantLinear(128, 64, device=device, dtype=dtype).load_state_dict(smoothed_state)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"smooth\""):
        QuantLinear(128, 64, smoothed=True, device=device, dtype=dtype).load_state_dict(
            QuantLinear.from_linear(linear).state_dict())


def test_smoothed_constructor_repr_and_errors():
    layer = QuantLinear(16, 8, smoothed=True)
    assert layer.smooth.shape == (16,) and layer.smooth.dtype == torch.float32 and torch.equal(layer.smooth,
                                                                                               torch.ones(16))
    assert "smoothed=True" in repr(layer)
    assert "smoothed" not in repr(QuantLinear(16, 8)) and QuantLinear(16, 8).smooth is None
    linear = nn.Linear(16, 8)
    with pytest.raises(ValueError, match=r"smooth must have shape \[in_features\] = \[16\], got \[8\]"):
        QuantLinear.from_linear(linear, smooth=torch.ones(8))
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        smooth = torch.ones(16)
        smooth[3] = bad
        with pytest.raises(ValueError, match="smooth must be finite and positive"):
            QuantLinear.from_linear(linear, smooth=smooth)


def test_torch_compile_fullgraph_smoothed(device):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    dtype = float_dtypes(device)[0]
    model = nn.Sequential(
        QuantLinear.from_linear(nn.Linear(32, 64).to(device, dtype), act="static", act_scale=0.05,
                                smooth=torch.rand(32, device=device) + 0.5),
        nn.GELU(),
        QuantLinear.from_linear(nn.Linear(64, 16).to(device, dtype), smooth=torch.rand(64, device=device) + 0.5),
    )
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for batch in (2, 3, 5):
        x = torch.randn(batch, 32, device=device, dtype=dtype)
        torch._dynamo.mark_dynamic(x, 0)
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    assert counter.frame_count == 1


def test_model_half_keeps_scales_float32():
    layer = QuantLinear.from_linear(nn.Linear(16, 8), act="static", act_scale=0.05, act_shift=0.1,
                                    smooth=torch.full((16,), 0.5))
    layer.half()
    assert layer.bias.dtype == torch.float16
    for name in ("w_scale", "act_scale", "act_shift", "smooth"):
        assert getattr(layer, name).dtype == torch.float32, name
    layer.to(torch.bfloat16)
    assert layer.bias.dtype == torch.bfloat16 and layer.w_scale.dtype == torch.float32
    assert layer.qweight.dtype == torch.int8
