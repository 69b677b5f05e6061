"""Half-precision products in fp32 on CPUs without half-precision kernels: same arithmetic, same model outputs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from srt_trainer.models import load_student
from srt_trainer.models.precision import (
    HalfProductsInFloat32,
    float32_products,
    float32_products_for,
    needs_float32_products,
)


class AtenProducts(TorchDispatchMode):
    """Records the dtypes of the matrix-product kernels that actually run (below the function-level mode)."""

    KERNELS = ("mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product", "_flash_attention")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name.startswith(self.KERNELS):
            self.seen.append((name, args[0].dtype))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_products_are_fp32_accumulated_half_products(dtype):
    torch.manual_seed(0)
    x, w, b = torch.randn(5, 3, 64).to(dtype), torch.randn(48, 64).to(dtype), torch.randn(48).to(dtype)
    m = torch.randn(64, 64).to(dtype)
    with HalfProductsInFloat32(), AtenProducts() as kernels:
        got = F.linear(x, w, b)
        mm = x @ w.T
        mm2d = m @ m  # Tensor.matmul
        mm_fn = torch.mm(m, m)
        bmm = torch.bmm(x, x.transpose(1, 2))
        att = F.scaled_dot_product_attention(x, x, x)
    # every product kernel ran in fp32, and there was one for each call
    assert len(kernels.seen) >= 6 and all(dt == torch.float32 for _, dt in kernels.seen), kernels.seen
    assert mm2d.dtype == mm_fn.dtype == att.dtype == dtype and torch.equal(mm2d, (m.float() @ m.float()).to(dtype))
    # exactly the fp32 product of the half values, rounded once to half precision
    assert got.dtype == mm.dtype == bmm.dtype == dtype
    assert torch.equal(got, F.linear(x.float(), w.float(), b.float()).to(dtype))
    assert torch.equal(mm, (x.float() @ w.float().T).to(dtype))
    # and PyTorch's own half-precision kernel (also fp32-accumulating) agrees to the last bit or two
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=2**-6, atol=1e-2)
    torch.testing.assert_close(bmm, torch.bmm(x, x.transpose(1, 2)), rtol=2**-6, atol=1e-2)


def test_attention_and_other_ops():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 16).to(torch.bfloat16) for _ in range(3))
    with HalfProductsInFloat32():
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        plain = F.linear(torch.randn(4, 8), torch.randn(3, 8))  # fp32 operands: untouched
        act = F.silu(q)  # not a product: stays in bf16 arithmetic
    assert att.dtype == torch.bfloat16 and plain.dtype == torch.float32
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).to(torch.bfloat16)
    assert torch.equal(att, want)
    assert torch.equal(act, F.silu(q))


# a CPU with AVX2 only, as oneDNN sees this one when told to stop there (its own switch, read at start-up)
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
WITHOUT_HALF_KERNELS = """
import logging, torch
from srt_trainer.models.precision import HalfProductsInFloat32, cpu_has_half_kernels, float32_products_for, \\
    warn_if_slow_half
logging.basicConfig(level=logging.WARNING)
layer = torch.nn.Linear(8, 8)
for dtype in (torch.bfloat16, torch.float16, torch.float32):
    layer.to(dtype)
    warn_if_slow_half(layer)
    print(cpu_has_half_kernels(dtype), isinstance(float32_products_for(layer), HalfProductsInFloat32))
"""


def test_when_it_applies():
    """Full precision and GPUs never take the mode; a half-precision model on a CPU without half-precision kernels
    does, and says so at load time."""
    assert isinstance(float32_products(torch.float32, "cpu"), contextlib.nullcontext)
    assert isinstance(float32_products(torch.bfloat16, "cuda"), contextlib.nullcontext)
    assert not needs_float32_products(torch.float16, "cuda:0")
    env = {**os.environ, **AVX2_ONLY}
    res = subprocess.run(
        [sys.executable, "-c", WITHOUT_HALF_KERNELS], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:3] == ["False True", "False True", "True False"]
    assert "no bfloat16 matrix kernels" in res.stderr and "no float16 matrix kernels" in res.stderr
    assert "float32 matrix kernels" not in res.stderr


def test_bf16_student_gives_the_same_predictions(embedded_dir, embedded_tokenizer):
    """The embedded student in bf16: the mode's logits match PyTorch's own bf16 kernels to bf16 noise."""
    model = load_student(embedded_dir, dtype="bfloat16", device="cpu")
    ids = torch.tensor([embedded_tokenizer("The capital of France is Paris. The capital of Italy is")["input_ids"]])
    with torch.no_grad():
        native = model(ids).logits.float()
        with HalfProductsInFloat32():
            emulated = model(ids).logits.float()
    assert (native.argmax(-1) == emulated.argmax(-1)).float().mean() >= 0.9
    assert (native - emulated).abs().mean() < 0.05 * native.std()
    assert isinstance(float32_products_for(model), HalfProductsInFloat32) is needs_float32_products(
        torch.bfloat16, "cpu"
    )
