"""Whole attention heads of nn.MultiheadAttention as prunable groups.

nn.MultiheadAttention runs its heads inside one functional call and ties the inner width to the
embedding width (embed_dim = num_heads * head_dim), so neither channel pruning nor forward hooks on
its projections can remove a head. Each attention module's heads therefore form one group of their
own (graph.py), handled here:

- masked: a forward hook recomputes the attention with only the kept heads (`attention`), from
  slices of the module's own parameters, so fine-tuning still trains them;
- shrunk: the module is replaced by `PrunedMultiheadAttention`, which holds only the kept heads'
  projections and runs the same `attention` function, so masked and shrunk outputs agree exactly.

Whole heads rather than head dimensions: the softmax scale 1/sqrt(head_dim) stays the same, so the
kept heads compute exactly what they computed before.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_MHA_FORWARD = inspect.signature(nn.MultiheadAttention.forward)


def head_pruning_blocker(mha: nn.MultiheadAttention) -> str | None:
    """Why this module's heads cannot be pruned, or None."""
    if mha.bias_k is not None or mha.add_zero_attn:
        return "nn.MultiheadAttention with add_bias_kv/add_zero_attn is not supported for head pruning"
    if mha.num_heads < 2:
        return "only 1 attention head"
    return None


@dataclass
class HeadWeights:
    """Projections of the kept heads: q/k/v rows and out_proj columns of those heads only."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_bias: torch.Tensor | None
    k_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    out: torch.Tensor
    out_bias: torch.Tensor | None


def _head_rows(kept: list[int], head_dim: int, device) -> torch.Tensor:
    return torch.tensor([h * head_dim + i for h in kept for i in range(head_dim)], dtype=torch.long, device=device)


def kept_head_weights(mha: nn.MultiheadAttention, kept: list[int]) -> HeadWeights:
    """Slices (differentiable views by index) of `mha`'s parameters for the kept heads."""
    e = mha.embed_dim
    device = mha.out_proj.weight.device
    rows = _head_rows(kept, mha.head_dim, device)
    if mha._qkv_same_embed_dim:
        q, k, v = mha.in_proj_weight[rows], mha.in_proj_weight[rows + e], mha.in_proj_weight[rows + 2 * e]
    else:
        q, k, v = mha.q_proj_weight[rows], mha.k_proj_weight[rows], mha.v_proj_weight[rows]
    b = mha.in_proj_bias
    biases = (None, None, None) if b is None else (b[rows], b[rows + e], b[rows + 2 * e])
    return HeadWeights(q, k, v, *biases, mha.out_proj.weight[:, rows], mha.out_proj.bias)


def _additive_mask(attn_mask, key_padding_mask, batch: int, heads_total: int, kept: list[int], dtype):
    """attn_mask and key_padding_mask as one additive float mask broadcastable to (B, H', L, S)."""
    mask = None
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        if m.dim() == 3:  # (B * heads, L, S): one mask per head, so keep the kept heads' masks
            m = m.reshape(batch, heads_total, m.shape[-2], m.shape[-1])[:, kept]
        mask = m.to(dtype)
    if key_padding_mask is not None:
        p = key_padding_mask
        if p.dtype == torch.bool:
            p = torch.zeros(p.shape, dtype=dtype, device=p.device).masked_fill(p, float("-inf"))
        p = p.to(dtype).reshape(batch, 1, 1, p.shape[-1])
        mask = p if mask is None else mask + p
    return mask


def attention(query, key, value, w: HeadWeights, head_dim: int, kept: list[int], heads_total: int,
              batch_first: bool, dropout: float, training: bool, key_padding_mask=None, need_weights: bool = True,
              attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
    """Multi-head attention over the kept heads only; the arguments and return value follow
    nn.MultiheadAttention.forward (is_causal is only a hint there: attn_mask carries the mask)."""
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    if batch_first and not unbatched:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    # From here on: (L, B, E), as in torch's own implementation.
    heads = len(kept)
    tgt_len, batch = query.shape[0], query.shape[1]

    def split(x: torch.Tensor) -> torch.Tensor:  # (L, B, H'*hd) -> (B, H', L, hd)
        return x.reshape(x.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3)

    q = split(F.linear(query, w.q, w.q_bias))
    k = split(F.linear(key, w.k, w.k_bias))
    v = split(F.linear(value, w.v, w.v_bias))
    scores = torch.matmul(q * (1.0 / math.sqrt(head_dim)), k.transpose(-2, -1))
    mask = _additive_mask(attn_mask, key_padding_mask, batch, heads_total, kept, scores.dtype)
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    if dropout > 0.0 and training:
        weights = F.dropout(weights, p=dropout)
    out = torch.matmul(weights, v)  # (B, H', L, hd)
    out = out.permute(2, 0, 1, 3).reshape(tgt_len, batch, heads * head_dim)
    out = F.linear(out, w.out, w.out_bias)
    if batch_first and not unbatched:
        out = out.transpose(0, 1)
    if unbatched:
        out = out.squeeze(1)
    if not need_weights:
        return out, None
    if average_attn_weights:
        weights = weights.mean(dim=1)
    return out, weights.squeeze(0) if unbatched else weights


def head_mask_hook(kept: list[int]):
    """Forward hook (with_kwargs) that replaces an nn.MultiheadAttention's output by the attention
    of its kept heads. Being a hook also keeps torch's fused fast paths, which would bypass it, off."""

    def hook(module: nn.MultiheadAttention, args, kwargs, _output):
        bound = _MHA_FORWARD.bind(module, *args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        a.pop("self")
        return attention(a.pop("query"), a.pop("key"), a.pop("value"), kept_head_weights(module, kept),
                         module.head_dim, kept, module.num_heads, module.batch_first, module.dropout,
                         module.training, **a)

    return hook


class PrunedMultiheadAttention(nn.Module):
    """Drop-in for an nn.MultiheadAttention that kept only some heads (same call signature, same
    embedding width in and out, fewer heads inside)."""

    # Declines torch's fused paths in nn.TransformerEncoderLayer/Encoder, which assume the dense layout.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, source: nn.MultiheadAttention, kept: list[int]):
        super().__init__()
        self.embed_dim, self.kdim, self.vdim = source.embed_dim, source.kdim, source.vdim
        self.head_dim, self.num_heads, self.source_heads = source.head_dim, len(kept), source.num_heads
        self.kept_heads = list(kept)
        self.batch_first, self.dropout = source.batch_first, source.dropout
        w = kept_head_weights(source, kept)
        inner = len(kept) * source.head_dim
        self.q_proj = _linear(w.q, w.q_bias)
        self.k_proj = _linear(w.k, w.k_bias)
        self.v_proj = _linear(w.v, w.v_bias)
        self.out_proj = _linear(w.out, w.out_bias)
        assert self.q_proj.out_features == inner

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        w = HeadWeights(self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.q_proj.bias,
                        self.k_proj.bias, self.v_proj.bias, self.out_proj.weight, self.out_proj.bias)
        return attention(query, key, value, w, self.head_dim, self.kept_heads, self.source_heads, self.batch_first,
                         self.dropout, self.training, key_padding_mask, need_weights, attn_mask,
                         average_attn_weights, is_causal)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                      dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def prune_heads(model: nn.Module, name: str, kept: list[int]) -> None:
    """Replace the nn.MultiheadAttention called `name` in `model` by one with only the kept heads."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    source = getattr(parent, attr)
    replacement = PrunedMultiheadAttention(source, kept)
    replacement.train(source.training)
    setattr(parent, attr, replacement)


def head_scores(mha: nn.MultiheadAttention) -> torch.Tensor:
    """L2 norm of each head's q/k/v rows and out_proj columns: one score per head (higher: keep)."""
    with torch.no_grad():
        scores = []
        for h in range(mha.num_heads):
            w = kept_head_weights(mha, [h])
            parts = [w.q, w.k, w.v, w.out] + [b for b in (w.q_bias, w.k_bias, w.v_bias) if b is not None]
            scores.append(sum(float(p.pow(2).sum()) for p in parts) ** 0.5)
        return torch.tensor(scores, dtype=torch.float32)
