"""Quantization numerics: scales and zero points, error bounds, grids, int4 packing."""

import pytest
import torch

from llmbook.adapt.quantize import (
    SCALE_FLOOR,
    choose_qparams,
    code_range,
    pack_int4,
    quantize,
    quantize_with,
    unpack_int4,
)

SETTINGS = [
    (bits, mapping, granularity, group)
    for bits in (8, 4)
    for mapping in ("symmetric", "affine")
    for granularity, group in (("tensor", None), ("channel", None), ("group", 16))
]


def _weights(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 64, generator=gen)
    x[3, 7] = 25.0  # an outlier
    x[5] += 3.0  # a row that is all positive-leaning, where a zero point helps
    return x


def _per_element(p, shape):
    N, K = shape
    return p.repeat_interleave(K // p.size(1), dim=1).expand(N, K)


@pytest.mark.parametrize(("bits", "mapping", "granularity", "group"), SETTINGS)
def test_round_trip_error_is_at_most_half_a_step(bits, mapping, granularity, group):
    x = _weights()
    q = quantize(x, bits=bits, mapping=mapping, granularity=granularity, group_size=group)
    lo, hi = code_range(bits)
    assert q.codes.dtype == torch.int8 and lo <= int(q.codes.min()) and int(q.codes.max()) <= hi
    err = (x - q.dequantize()).abs()
    bound = _per_element(q.scale, x.shape) / 2
    slack = 4 * torch.finfo(torch.float32).eps * x.abs()  # float32 rounding of x / s and s * q
    assert bool((err <= bound + slack).all())
    assert q.scale.dtype == torch.float32
    assert (q.zero_point is None) == (mapping == "symmetric")


def test_finer_granularity_lowers_the_error_around_an_outlier():
    x = _weights()
    errors = [
        float((x - quantize(x, bits=4, granularity=g, group_size=s).dequantize()).pow(2).mean())
        for g, s in (("tensor", None), ("channel", None), ("group", 16))
    ]
    assert errors[0] > errors[1] > errors[2]


def test_symmetric_int8_by_hand():
    x = torch.tensor([[-127.5, 64.0, 32.25, 127.5]])
    q = quantize(x, bits=8)
    assert float(q.scale) == 1.0
    # -127.5 rounds half to even (-128); +127.5 rounds to 128 and is clamped to 127.
    assert q.codes.tolist() == [[-128, 64, 32, 127]]


def test_affine_by_hand():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    q = quantize(x, bits=2, mapping="affine", granularity="tensor")
    assert float(q.scale) == 1.0 and int(q.zero_point) == -2
    assert q.codes.tolist() == [[-2, -1, 0, 1]]
    assert q.dequantize().tolist() == x.tolist()


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_values_on_the_grid_are_exact(bits):
    lo, hi = code_range(bits)
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(lo, hi + 1, (6, 32), generator=gen)
    codes[:, 0], codes[:, 1] = lo, hi  # every row spans the whole range
    zero = torch.randint(lo, hi + 1, (6, 1), generator=gen)
    scale = 2.0 ** torch.randint(-8, 2, (6, 1), generator=gen).float()  # exact in binary
    x = (codes - zero).float() * scale
    # Affine parameters are recovered from the values themselves; the reconstruction is exact.
    q = quantize(x, bits=bits, mapping="affine", granularity="channel")
    assert torch.equal(q.dequantize(), x)
    # On a given grid, codes and values come back exactly (symmetric: zero point 0).
    sym = codes.float() * scale
    assert torch.equal(quantize_with(sym, scale, None, bits=bits).long(), codes)
    again = quantize(sym, bits=bits)
    assert torch.equal(quantize_with(again.dequantize(), again.scale, None, bits=bits), again.codes)


@pytest.mark.parametrize("mapping", ["symmetric", "affine"])
def test_all_zero_rows_and_groups(mapping):
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    x[1] = 0.0
    x[2, 16:] = 0.0
    for granularity, group in (("channel", None), ("group", 16), ("tensor", None)):
        xx = torch.zeros_like(x) if granularity == "tensor" else x
        q = quantize(xx, bits=4, mapping=mapping, granularity=granularity, group_size=group)
        assert bool(torch.isfinite(q.scale).all()) and float(q.scale.min()) >= SCALE_FLOOR
        deq = q.dequantize()
        assert bool(torch.isfinite(deq).all())
        assert bool((deq[xx == 0] == 0).all())  # zero is exact in both mappings


def test_bfloat16_input():
    x = _weights().bfloat16()
    q = quantize(x, bits=8)
    assert q.scale.dtype == torch.float32
    assert q.dequantize(torch.bfloat16).dtype == torch.bfloat16
    slack = 4 * torch.finfo(torch.float32).eps * x.float().abs()
    assert bool(((x.float() - q.dequantize()).abs() <= q.scale / 2 + slack).all())


def test_nbytes_counts_packed_codes_and_parameters():
    q = quantize(_weights(), bits=4, granularity="group", group_size=16, mapping="affine")
    assert q.nbytes() == 12 * 64 // 2 + 12 * 4 * (4 + 1)


@pytest.mark.parametrize("shape", [(16,), (3, 16), (5, 2, 32), (1, 2)])
def test_pack_unpack_round_trip_every_int4_value(shape):
    codes = (torch.arange(torch.Size(shape).numel()) % 16 - 8).reshape(shape).to(torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (*shape[:-1], shape[-1] // 2)
    assert torch.equal(unpack_int4(packed), codes)
    every_byte = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(pack_int4(unpack_int4(every_byte)), every_byte)


def test_pack_layout_by_hand():
    packed = pack_int4(torch.tensor([[-8, 7, 0, -1]], dtype=torch.int8))
    assert packed.tolist() == [[0xF0, 0x78]]  # low nibble first: 0 | 15 << 4, 8 | 7 << 4


def test_pack_refuses_what_it_cannot_pack():
    with pytest.raises(ValueError, match="^codes: the last dimension must be even"):
        pack_int4(torch.zeros(3, 7, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"^codes: int4 codes must lie in \[-8, 7\]"):
        pack_int4(torch.tensor([8, 0]))
    with pytest.raises(ValueError, match="^codes:"):
        pack_int4(torch.zeros(4))
    with pytest.raises(ValueError, match="^packed:"):
        unpack_int4(torch.zeros(4, dtype=torch.int8))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"bits": 1}, "bits"),
        ({"bits": 9}, "bits"),
        ({"bits": True}, "bits"),
        ({"mapping": "absmax"}, "mapping"),
        ({"granularity": "row"}, "granularity"),
        ({"granularity": "group", "group_size": 5}, "group_size"),
        ({"granularity": "group", "group_size": 0}, "group_size"),
        ({"granularity": "group"}, "group_size"),
        ({"granularity": "channel", "group_size": 8}, "group_size"),
    ],
)
def test_invalid_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        quantize(torch.randn(4, 16), **kwargs)


@pytest.mark.parametrize(
    "x", [torch.randn(16), torch.ones(2, 4, dtype=torch.int32), torch.tensor([[1.0, float("nan")]])]
)
def test_invalid_inputs_name_x(x):
    with pytest.raises(ValueError, match="^x:"):
        choose_qparams(x)


def test_quantize_with_refuses_a_scale_that_does_not_fit():
    with pytest.raises(ValueError, match="^scale:"):
        quantize_with(torch.randn(4, 16), torch.ones(3, 1), None)
