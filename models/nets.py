"""N-HiTS and PatchTST as plain torch modules, for inference without neuralforecast.

Training stays on neuralforecast (:mod:`models.sequence`); serving does not need it. Importing
neuralforecast pulls in Lightning, Ray, Optuna and their friends (seconds of start-up), while
a trained model is only a few ``Linear`` layers and an attention block. These modules hold
the same parameters under the same ``state_dict`` keys as ``neuralforecast.models.NHITS`` /
``PatchTST`` (so a state dict saved from either loads into the other, strictly), and compute
the same function in eval mode:

- :class:`NHiTSNet`: the univariate, exogenous-free N-HiTS forward (``identity`` stacks,
  max-pooling, linear interpolation of the forecast knots, a point loss's identity
  ``domain_map``). neuralforecast's block MLP is kept as it is: ``Linear`` into the first
  width, then ``Linear, ReLU`` per ``mlp_units`` entry (the first ``Linear`` has no activation
  after it), then the ``Linear`` to ``theta``.
- :class:`PatchTSTNet`: RevIN (``subtract_last``, no affine: neuralforecast's defaults),
  end padding by ``stride``, patching, the residual-attention encoder with BatchNorm (eval:
  running statistics), the flatten head, RevIN's inverse.

Their ``forward`` is written for speed on batches of windows, not as a transcription: the
three attention projections are one matrix product, BatchNorm is one multiply-add with
pre-computed coefficients, N-HiTS's interpolation is a matrix, the head's weights are permuted
so that no transpose is copied. Those change the order of some floating-point sums, so results
equal neuralforecast's to rounding, not bit for bit (tests/models/test_sequence.py checks it in
float64 against the neuralforecast module, to 1e-9 of a basis point).

Input is chunked: ``(C, B, L)``, C chunks of B windows of L one-bar log returns in model
units (basis points; the caller scales), output ``(C, B, h)`` point forecasts. Every matrix
product is per chunk (:func:`_linear`: a batched product of C products of one shape) or per
window (attention), and every other operation per element or per window, so a chunk's result
has the same bits whatever C is and a window's whatever its neighbours: the caller
(:mod:`models.sequence`) relies on it for decisions that do not depend on batching.
:func:`build_net` makes the module a ``params.json`` describes; :meth:`inference_copy` gives
an eval-mode copy in another dtype with the derived (fused) weights computed once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5  # torch.nn.BatchNorm1d's default, which neuralforecast's PatchTST uses
REVIN_EPS = 1e-5  # neuralforecast's RevIN default


class _Net(nn.Module):
    """What both nets share: an eval-mode copy in a dtype with derived weights cached."""

    input_size: int
    h: int

    def inference_copy(self, dtype: torch.dtype) -> _Net:
        """A detached eval-mode copy in ``dtype`` whose derived weights are computed once
        (the copy must not be trained: :meth:`_derive` does not see later changes)."""
        import copy

        net = copy.deepcopy(self).to(dtype).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        net._fast = net._derive()
        return net

    def _derive(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def _derived(self) -> Any:
        """The derived weights: cached on an inference copy, fresh otherwise (a module that
        is still being trained must not run on stale copies of its weights)."""
        return self._fast if self._fast is not None else self._derive()


# --- N-HiTS ------------------------------------------------------------------------------------
class _NHiTSBlock(nn.Module):
    """One identity-basis block: pooled residuals -> MLP -> theta (backcast | knots)."""

    def __init__(
        self,
        input_size: int,
        h: int,
        n_theta: int,
        mlp_units: Sequence[Sequence[int]],
        pool: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.pool = int(pool)
        pooled = math.ceil(input_size / pool)
        layers: list[nn.Module] = [nn.Linear(pooled, mlp_units[0][0])]
        for width_in, width_out in mlp_units:
            layers.append(nn.Linear(width_in, width_out))
            layers.append(nn.ReLU())
            if dropout > 0:  # keeps neuralforecast's layer indices (a no-op in eval mode)
                layers.append(nn.Dropout(p=dropout))
        layers.append(nn.Linear(mlp_units[-1][1], n_theta))
        self.layers = nn.Sequential(*layers)


class NHiTSNet(_Net):
    """neuralforecast's N-HiTS (univariate, no exogenous inputs) for inference."""

    def __init__(
        self,
        input_size: int,
        h: int,
        mlp_units: Sequence[Sequence[int]] = ((512, 512),) * 3,
        n_pool_kernel_size: Sequence[int] = (2, 2, 1),
        n_freq_downsample: Sequence[int] = (4, 2, 1),
        dropout_prob_theta: float = 0.0,
        n_blocks: Sequence[int] | None = None,
        pooling_mode: str = "MaxPool1d",
        interpolation_mode: str = "linear",
        activation: str = "ReLU",
    ) -> None:
        super().__init__()
        if (pooling_mode, interpolation_mode, activation) != ("MaxPool1d", "linear", "ReLU"):
            raise ValueError(
                "NHiTSNet implements MaxPool1d pooling, linear interpolation and "
                f"ReLU only, got {pooling_mode}/{interpolation_mode}/{activation}"
            )
        self.input_size, self.h = int(input_size), int(h)
        blocks = []
        for i, pool in enumerate(n_pool_kernel_size):
            for _ in range((n_blocks or [1] * len(n_pool_kernel_size))[i]):
                n_theta = input_size + max(h // n_freq_downsample[i], 1)
                blocks.append(
                    _NHiTSBlock(input_size, h, n_theta, mlp_units, pool, dropout_prob_theta)
                )
        self.blocks = nn.ModuleList(blocks)
        self._fast: Any = None

    def _derive(
        self,
    ) -> list[tuple[int, list[tuple[torch.Tensor, torch.Tensor, bool]], torch.Tensor]]:
        """Per block: pooling, the MLP's (weight, bias, relu-after) and the knots'
        interpolation matrix (``F.interpolate``'s own weights, applied to the identity)."""
        fast = []
        for block in cast(Sequence[_NHiTSBlock], self.blocks):
            mods = list(block.layers)
            steps: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
            for i, m in enumerate(mods):
                if isinstance(m, nn.Linear):
                    relu = i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
                    steps.append((m.weight.t(), m.bias, relu))
            n_knots = steps[-1][0].shape[1] - self.input_size
            eye = torch.eye(n_knots, dtype=steps[-1][0].dtype).unsqueeze(1)
            interp = F.interpolate(eye, size=self.h, mode="linear")[:, 0, :]  # (knots, h)
            fast.append((block.pool, steps, interp))
        return fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Chunks of windows ``(C, B, L)`` -> forecasts ``(C, B, h)`` (all-finite windows:
        neuralforecast's mask is 1). Every product is per chunk (:func:`_linear`)."""
        C, B, L = x.shape
        residuals = x.flip(dims=(-1,))
        forecast = x[..., -1:].expand(C, B, self.h)  # level (naive-1), as neuralforecast
        for pool, steps, interp in self._derived():
            z = residuals
            if pool > 1:
                z = F.max_pool1d(z.reshape(C * B, 1, L), pool, pool, ceil_mode=True).view(C, B, -1)
            for w, b, relu in steps:
                z = _linear(z, w, b)
                if relu:
                    z = F.relu(z)
            residuals = residuals - z[..., :L]
            forecast = forecast + torch.bmm(z[..., L:], interp.expand(C, *interp.shape))
        return forecast


def _linear(x: torch.Tensor, wt: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x @ wt + b`` (``wt``: a Linear's weight transposed) for ``x`` of shape
    ``(C, M, K)``, as one batched product of C ``(M, K) x (K, N)`` products: each chunk's
    result has the same bits whatever C is (a single ``(C * M, K)`` product would let BLAS
    choose its kernel by C * M; tests/models/test_nets.py checks both claims)."""
    return torch.baddbmm(b, x, wt.expand(x.shape[0], *wt.shape))


# --- PatchTST ----------------------------------------------------------------------------------
class _Transpose(nn.Module):
    """Stands where neuralforecast's ``Transpose`` stands, so the BatchNorm keys match."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class _Scale(nn.Module):
    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor((d // n_heads) ** -0.5), requires_grad=False)


class _Attention(nn.Module):
    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.W_Q, self.W_K, self.W_V = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.sdp_attn = _Scale(d, n_heads)
        self.to_out = nn.Sequential(nn.Linear(d, d), nn.Dropout(0.0))


class _EncoderLayer(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.self_attn = _Attention(d, n_heads)
        self.norm_attn = nn.Sequential(_Transpose(), nn.BatchNorm1d(d), _Transpose())
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Dropout(0.0), nn.Linear(d_ff, d))
        self.norm_ffn = nn.Sequential(_Transpose(), nn.BatchNorm1d(d), _Transpose())


class _Encoder(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_EncoderLayer(d, n_heads, d_ff) for _ in range(n_layers)])


class _Backbone(nn.Module):
    def __init__(
        self, patch_len: int, n_patches: int, d: int, n_heads: int, d_ff: int, n_layers: int
    ) -> None:
        super().__init__()
        self.W_P = nn.Linear(patch_len, d)
        self.W_pos = nn.Parameter(torch.zeros(n_patches, d))
        self.encoder = _Encoder(d, n_heads, d_ff, n_layers)


class _Head(nn.Module):
    def __init__(self, n_in: int, h: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, h)


class _PatchTSTModel(nn.Module):
    """neuralforecast's ``PatchTST.model`` (``PatchTST_backbone``): the key prefix."""

    def __init__(
        self, patch_len: int, n_patches: int, d: int, n_heads: int, d_ff: int, n_layers: int, h: int
    ) -> None:
        super().__init__()
        self.backbone = _Backbone(patch_len, n_patches, d, n_heads, d_ff, n_layers)
        self.head = _Head(d * n_patches, h)


class PatchTSTNet(_Net):
    """neuralforecast's PatchTST (univariate, point loss, its fixed choices: end padding,
    ``zeros`` positional encoding learned, BatchNorm, residual attention, flatten head,
    RevIN with ``subtract_last`` and no affine) for inference."""

    def __init__(
        self,
        input_size: int,
        h: int,
        hidden_size: int = 128,
        n_heads: int = 16,
        encoder_layers: int = 3,
        linear_hidden_size: int = 256,
        patch_len: int = 16,
        stride: int = 8,
        revin: bool = True,
        **_ignored: Any,
    ) -> None:
        super().__init__()
        self.input_size, self.h = int(input_size), int(h)
        self.patch_len = min(input_size + stride, patch_len)
        self.stride = int(stride)
        self.n_patches = int((input_size - self.patch_len) / stride + 1) + 1  # end padding
        self.d, self.n_heads, self.revin = int(hidden_size), int(n_heads), bool(revin)
        self.model = _PatchTSTModel(
            self.patch_len,
            self.n_patches,
            hidden_size,
            n_heads,
            linear_hidden_size,
            encoder_layers,
            h,
        )
        self._fast: Any = None

    def _derive(self) -> dict[str, Any]:
        """Fused QKV weights, BatchNorm as scale and shift, the head's weight in
        (patch, channel) order: computed once per inference copy."""
        layers = []
        for layer in cast(Sequence[_EncoderLayer], self.model.backbone.encoder.layers):
            att = layer.self_attn
            w_qkv = torch.cat([att.W_Q.weight, att.W_K.weight, att.W_V.weight])
            b_qkv = torch.cat([att.W_Q.bias, att.W_K.bias, att.W_V.bias])
            out, ff_in, ff_out = (
                cast(nn.Linear, m) for m in (att.to_out[0], layer.ff[0], layer.ff[3])
            )
            layers.append(
                (
                    w_qkv.t(),
                    b_qkv,
                    att.sdp_attn.scale.detach().clone(),
                    out.weight.t(),
                    out.bias,
                    *_bn_affine(cast(nn.BatchNorm1d, layer.norm_attn[1])),
                    ff_in.weight.t(),
                    ff_in.bias,
                    ff_out.weight.t(),
                    ff_out.bias,
                    *_bn_affine(cast(nn.BatchNorm1d, layer.norm_ffn[1])),
                )
            )
        head = self.model.head.linear
        # the head flattens (channel, patch); the encoder output is (patch, channel)
        w_head = (
            head.weight.view(self.h, self.d, self.n_patches)
            .transpose(1, 2)
            .reshape(self.h, self.n_patches * self.d)
            .contiguous()
        )
        pad = torch.full((self.stride,), self.input_size - 1, dtype=torch.long)
        take = torch.cat([torch.arange(self.input_size), pad])
        starts = torch.arange(self.n_patches) * self.stride
        index = take[starts[:, None] + torch.arange(self.patch_len)[None, :]]  # (P, patch)
        return {
            "layers": layers,
            "w_head": w_head.t(),
            "b_head": head.bias,
            "w_patch": self.model.backbone.W_P.weight.t(),
            "index": index.reshape(-1),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Chunks of windows ``(C, B, L)`` -> forecasts ``(C, B, h)``. Every product is per
        chunk (:func:`_linear`) or per window (attention)."""
        f = self._derived()
        C, B, _ = x.shape
        P, D, H = self.n_patches, self.d, self.n_heads
        dk = D // H
        if self.revin:
            last = x[..., -1:]
            std = torch.sqrt(x.var(dim=-1, unbiased=False, keepdim=True) + REVIN_EPS)
            x = (x - last) / std
        patches = x[..., f["index"]].view(C, B * P, self.patch_len)  # end padding + unfold
        bb = self.model.backbone
        u = (_linear(patches, f["w_patch"], bb.W_P.bias).view(C, B, P, D) + bb.W_pos).view(
            C, B * P, D
        )
        prev = None
        for w_qkv, b_qkv, scale, w_o, b_o, a1, c1, w1, b1, w2, b2, a2, c2 in f["layers"]:
            # one copy puts q, k, v in (window * head, P, dk) blocks; a softmax written out
            # is several times faster than torch.softmax over 8 scores
            qkv = (
                _linear(u, w_qkv, b_qkv)
                .view(C * B, P, 3, H, dk)
                .permute(2, 0, 3, 1, 4)
                .contiguous()
                .view(3, C * B * H, P, dk)
            )
            q, k, v = qkv[0], qkv[1], qkv[2]
            if prev is None:
                scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
            else:
                scores = torch.baddbmm(prev, q, k.transpose(1, 2), alpha=scale)
            e = (scores - scores.amax(-1, keepdim=True)).exp_()
            attn = e.div_(e.sum(-1, keepdim=True))
            out = torch.bmm(attn, v).view(C * B, H, P, dk).transpose(1, 2).reshape(C, B * P, D)
            src = _linear(out, w_o, b_o).add_(u).mul_(a1).add_(c1)
            hidden = F.gelu(_linear(src, w1, b1))
            u = _linear(hidden, w2, b2).add_(src).mul_(a2).add_(c2)
            prev = scores
        y = _linear(u.view(C, B, P * D), f["w_head"], f["b_head"])
        if self.revin:
            y = y * std + last
        return y


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``x * a + c``."""
    assert bn.running_var is not None and bn.running_mean is not None
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - bn.running_mean * a


# --- building from params.json -----------------------------------------------------------------
NETS: dict[str, type[_Net]] = {"NHITS": NHiTSNet, "PatchTST": PatchTSTNet}


def build_net(nf_class: str, arch: Mapping[str, Any], input_size: int, h: int) -> _Net:
    """The plain module of a neuralforecast class name with its architecture arguments (as
    :meth:`models.sequence.SeqParams.arch_kwargs` gives them)."""
    if nf_class not in NETS:
        raise ValueError(f"no plain torch module for neuralforecast class {nf_class!r}")
    kwargs = dict(arch)
    if nf_class == "PatchTST":
        for unsupported, default in (
            ("revin_affine", False),
            ("revin_subtract_last", True),
            ("res_attention", True),
            ("batch_normalization", False),
            ("activation", "gelu"),
        ):
            if kwargs.pop(unsupported, default) != default:
                raise ValueError(f"PatchTSTNet implements {unsupported}={default} only")
        kwargs.pop("dropout", None)
        kwargs.pop("fc_dropout", None)
    # the initial weights are overwritten by a state dict: leave the global RNG untouched
    with torch.random.fork_rng(devices=[]):
        return NETS[nf_class](input_size=input_size, h=h, **kwargs)
