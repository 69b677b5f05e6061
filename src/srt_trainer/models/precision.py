"""Half-precision students on CPUs without half-precision matrix kernels.

PyTorch computes bf16 / fp16 matrix products on the CPU with oneDNN where the CPU has the instructions for it
(AVX-512, AMX). Elsewhere (AVX2-only x86, many cloud AMD EPYC machines) it falls back to a reference kernel: a
bf16 linear layer of a 135M model then runs ~7× slower than the same layer in fp32 (18 vs 135 GFLOP/s measured).

``HalfProductsInFloat32`` runs those products in fp32 on the *same* half-precision values and rounds the result
back to half precision. A product of two bf16 (or fp16) numbers is exact in fp32, so this is the arithmetic of a
half-precision matrix unit that accumulates in fp32 (AMX, GPU tensor cores): the model keeps its half-precision
weights and activations (and memory), and its products run at fp32 speed.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

logger = logging.getLogger(__name__)

HALF_DTYPES = (torch.bfloat16, torch.float16)


def cpu_has_half_kernels(dtype: torch.dtype) -> bool:
    """Whether PyTorch has fast CPU matrix kernels for ``dtype`` on this machine (its own oneDNN criterion)."""
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


def needs_float32_products(dtype: torch.dtype, device: torch.device | str) -> bool:
    """A half-precision model on a CPU whose half-precision matrix products would take the slow reference path."""
    return torch.device(device).type == "cpu" and dtype in HALF_DTYPES and not cpu_has_half_kernels(dtype)


class HalfProductsInFloat32(TorchFunctionMode):
    """Within this mode, linear layers, matrix products and attention whose operands are half precision run in
    fp32 on those values, and their results are rounded back to the operands' dtype; everything else is unchanged.
    """

    # the functions and the tensor methods (``a @ b`` arrives here as ``Tensor.matmul``)
    PRODUCTS = frozenset(
        {
            torch.nn.functional.linear,
            torch.nn.functional.scaled_dot_product_attention,
            *(
                getattr(owner, name)
                for owner in (torch, torch.Tensor)
                for name in ("matmul", "mm", "bmm", "addmm", "baddbmm")
            ),
        }
    )

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.PRODUCTS:
            half = next((a.dtype for a in args if isinstance(a, torch.Tensor) and a.dtype in HALF_DTYPES), None)
            if half is not None:
                up = lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype == half else t  # noqa: E731
                return func(*tree_map(up, args), **tree_map(up, kwargs)).to(half)
        return func(*args, **kwargs)


def float32_products(dtype: torch.dtype, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``HalfProductsInFloat32`` where ``dtype`` on ``device`` needs it (``needs_float32_products``), else a no-op."""
    return HalfProductsInFloat32() if needs_float32_products(dtype, device) else contextlib.nullcontext()


def float32_products_for(model: Any) -> contextlib.AbstractContextManager:
    """``float32_products`` for ``model``'s dtype and device."""
    param = next(model.parameters())
    return float32_products(param.dtype, param.device)


def warn_if_slow_half(model: Any) -> None:
    """Say, at load time, that ``model``'s half precision has no fast matrix kernels on this CPU."""
    param = next(model.parameters())
    if needs_float32_products(param.dtype, param.device):
        name = str(param.dtype).removeprefix("torch.")
        logger.warning(
            "this CPU has no %s matrix kernels (no AVX-512 / AMX): PyTorch computes %s products ~7x slower than "
            "float32. Scoring runs them in float32 on the %s values; for generation and training prefer "
            "--dtype float32 here.",
            name,
            name,
            name,
        )
