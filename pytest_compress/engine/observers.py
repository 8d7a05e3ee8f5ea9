"""Activation range observers, calibrated on data: min/max, percentile and MSE."""

from __future__ import annotations

import torch

from .quant import QuantizedTensor, choose_qparams, dequantize, quant_range, quantize_with

# Values kept per batch and in all for the percentile and MSE observers; a strided
# sample keeps calibration memory bounded and deterministic for any data size.
_SAMPLE_PER_BATCH = 1 << 16
_SAMPLE_TOTAL = 1 << 20
_MSE_CANDIDATES = 64


def _real_tokens(output: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``output``'s values at real tokens when its leading axes are the mask's (batch,
    tokens); the whole output otherwise (a pooled vector, attention scores by head)."""
    if mask is None or output.dim() < 3 or tuple(output.shape[:2]) != tuple(mask.shape):
        return output
    return output[mask.to(output.device)]


class RangeObserver:
    """Watches a layer's outputs over calibration batches and picks a clipping range."""

    def __init__(self, kind: str, percentile: float) -> None:
        self.kind = kind
        self.percentile = percentile
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        self.kept = 0
        self.calls = 0  # forwards seen, whether or not their output could be observed
        # The batch's padding mask (True on real tokens), set by the calibration loop: an
        # output laid out (batch, tokens, ...) is observed on its real tokens only.
        self.mask: torch.Tensor | None = None

    def __call__(self, module: torch.nn.Module, inputs: tuple, output: object) -> None:
        self.calls += 1
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return
        values = _real_tokens(output.detach(), self.mask).reshape(-1).to(torch.float32)
        if values.numel() == 0:
            return
        low, high = values.amin().cpu(), values.amax().cpu()
        self.min_val = low if self.min_val is None else torch.minimum(self.min_val, low)
        self.max_val = high if self.max_val is None else torch.maximum(self.max_val, high)
        if self.kind != "minmax" and self.kept < _SAMPLE_TOTAL:
            stride = max(1, values.numel() // _SAMPLE_PER_BATCH)
            sample = values[::stride].cpu()
            self.samples.append(sample)
            self.kept += sample.numel()

    @property
    def observed(self) -> bool:
        return self.min_val is not None

    def qparams(self, bits: int) -> tuple[float, int]:
        """(scale, zero point) of the affine per-tensor mapping for the observed range."""
        assert self.min_val is not None and self.max_val is not None
        low, high = self.min_val, self.max_val
        if self.kind == "percentile":
            low, high = self._percentile_range()
        elif self.kind == "mse":
            low, high = self._mse_range(bits)
        scale, zero_point = choose_qparams(low, high, bits=bits)
        return float(scale), int(zero_point)

    def _sample(self) -> torch.Tensor:
        return torch.cat(self.samples)[:_SAMPLE_TOTAL]

    def _percentile_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self._sample()
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], dtype=torch.float64)
        low, high = torch.quantile(sample.to(torch.float64), q)
        return low.to(torch.float32), high.to(torch.float32)

    def _mse_range(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The shrunken [f * min, f * max] whose fake-quantized sample has the least error."""
        assert self.min_val is not None and self.max_val is not None
        sample = self._sample().to(torch.float64)
        qmin, qmax = quant_range(bits, symmetric=False)
        best, best_error = (self.min_val, self.max_val), float("inf")
        for fraction in torch.linspace(1.0, 0.2, _MSE_CANDIDATES).tolist():
            low, high = self.min_val * fraction, self.max_val * fraction
            scale, zero_point = choose_qparams(low, high, bits=bits)
            codes = quantize_with(sample, scale, zero_point, qmin=qmin, qmax=qmax)
            restored = dequantize(
                QuantizedTensor(codes, scale, zero_point, bits, None, qmin, qmax, torch.float64)
            )
            error = float(torch.mean((restored - sample) ** 2))
            if error < best_error:
                best, best_error = (low, high), error
        return best
