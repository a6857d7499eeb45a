"""A lean decoding step for ``GPT``: the math of ``GPT.forward`` with a cache,
for the new tokens of one call (one per decoding step, or the prompt), without
the module calls, returning only the last position's logits.

Why it exists: decoding one token with a small model is about a hundred tiny
kernels, and in eager PyTorch the Python around them (about fifty
``nn.Module`` calls, ``split``/``view``/``transpose`` chains, masks, position
tensors, an id check that reads the ids back) costs more than the kernels.
``DecodeStep`` looks the modules up once, when it is built, binds each
matmul to a kernel at the first call with a given row count, and then runs
each step as a flat sequence of kernels (``F.embedding``, ``F.layer_norm``,
``F.scaled_dot_product_attention``, and for each matmul a kernel chosen by
measuring on this machine: ``F.linear``, oneDNN, torch's addmm on an (in, out)
copy, or ``nn.linear.row_linear`` for one row; see ``_plan``), writing into the
same ``ModelCache`` as ``forward``. It is applied from
outside the model: ``generate`` picks it when ``DecodeStep.supports(model)``.
So a prompt can be run with ``forward`` and continued with ``DecodeStep``,
and the logits agree with ``forward``'s to float rounding (tested to 1e-5 of their scale for
every cacheable positional encoding, both norm placements, every activation
and left-padded batches).

What it does not cover, it refuses at construction (``DecodeStep.supports``
names the reason) and callers fall back to ``forward``: active dropout
(training mode with dropout > 0), positional encodings without cache
support, modules with forward hooks (they would be skipped), and any block
that is not the standard self-attention + feed-forward ``Block``. The norm,
activation, positional scheme and attention implementation are not looked up
by name: LayerNorm runs ``F.layer_norm`` on its weights, any other norm runs
its own ``forward``; positions go through the scheme's ``embed``, ``rotary``
and ``attention_bias`` methods, as in ``forward`` (two exact shortcuts: learned
positions at the default ids add a view of consecutive rows instead of a
gather, and a base-class ``rotary``/``attention_bias``, which returns None, is
not called). Keys and values reach the cache in one copy
(``KVCache.append_kv`` on a view of the fused projection) unless rotary
positions must first rotate the keys.

Legend: B batch, S keys (cached + new), C model width, H heads, D head width,
V vocabulary.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.attention import MultiHeadAttention, apply_rotary, attention
from ..nn.blocks import Block
from ..nn.feedforward import ACTIVATIONS, FeedForward
from ..nn.linear import KernelTuner, default_tuner, onednn_available, onednn_linear, row_linear, row_linear_parts
from ..nn.masks import attention_mask_for
from ..nn.norm import LayerNorm
from ..nn.positional import LearnedPositions, PositionalEncoding
from .inputs import check_length, check_mask
from .stack import Embedder, ModelCache, Stack

Fn = Callable[[Tensor], Tensor]
# how a decoding matmul may run: "torch" F.linear on the weight; "onednn" oneDNN's matmul on it; "copy"
# torch's addmm on an (in, out) copy (F.linear's kernel minus a transpose per call); "row" row_linear on
# that copy (one row only)
DECODE_KERNELS: tuple[str, ...] = ("torch", "onednn", "copy", "row")


def _norm_fn(norm: nn.Module) -> Fn:
    """The norm as a plain function: LayerNorm through its fused kernel, any
    other norm (RMSNorm, the tutorial LayerNorm, none) through its own forward."""
    if type(norm) is LayerNorm:
        shape, weight, bias, eps = norm.weight.shape, norm.weight, norm.bias, norm.eps
        cudnn = torch.backends.cudnn.enabled
        return lambda x: torch.layer_norm(x, shape, weight, bias, eps, cudnn)  # what F.layer_norm calls
    return norm.forward


def _bound(kind: str, w: Tensor, b: Tensor | None, wt: Tensor | None, parts: int) -> Fn:
    """x (rows, in) -> x @ w.T + b by ``kind`` (see ``DECODE_KERNELS``); ``wt`` is w's (in, out) copy."""
    if kind == "onednn":
        return lambda x: onednn_linear(x, w, b)
    if kind == "torch":
        return lambda x: F.linear(x, w, b)
    if kind == "row":
        ids, offsets = row_linear_parts(wt.size(0), parts, wt.device)
        return lambda x: row_linear(x, wt, b, ids, offsets)
    return (lambda x: torch.mm(x, wt)) if b is None else (lambda x: torch.addmm(b, x, wt))


def _eligible(x: Tensor, w: Tensor, copies: bool) -> tuple[str, ...]:
    """The kernels that may compute rows x by weight w: for a float32 CPU product outside autocast
    all of them (``row`` for one row only; ``copy`` and ``row`` only if ``copies``: they read an
    (in, out) copy of the weight), else ``F.linear`` alone."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32:
        return ("torch",)
    if torch.is_autocast_enabled("cpu"):
        return ("torch",)
    kinds = ("torch",) + (("onednn",) if onednn_available() else ())
    if not copies:
        return kinds
    return kinds + ("copy",) + (("row",) if x.size(0) == 1 else ())


class _Attend(NamedTuple):
    """What every layer's attention needs in one call: sizes, positions and masks."""

    B: int
    T: int
    rope: tuple[Tensor, Tensor] | None  # cos, sin (T, D)
    mask: Tensor | None  # (B|1, 1, T, S) boolean, True = may attend
    bias: Tensor | None  # (H|1, T, S) additive
    is_causal: bool  # SDPA builds the causal triangle itself
    fused: bool  # SDPA's kernel may run (no bias, no mask beyond causal)


# each layer's bound matmuls (q|k|v, out, up, gate, down; None where absent) and the LM head's
_Plan = tuple[list[tuple[Fn | None, ...]], Fn]


@dataclass(frozen=True)
class _Layer:
    """One block's norms, Linear modules and activation, looked up once."""

    attn_norm: Fn
    qkv: nn.Linear  # (C -> 3C)
    out: nn.Linear  # (C -> C)
    impl: str
    mlp_norm: Fn | None  # None: the block has no feed-forward sublayer
    up: nn.Linear | None  # (C -> F)
    gate: nn.Linear | None  # (C -> F), swiglu only
    down: nn.Linear | None  # (F -> C)
    activation: Fn | None  # None for swiglu (gated)


def _layer(block: Block) -> _Layer:
    mha: MultiHeadAttention = block.attn
    attn = (_norm_fn(block.attn_norm), mha.in_proj, mha.out_proj, mha.impl)
    if block.mlp is None:
        return _Layer(*attn, *([None] * 5))
    ffn: FeedForward = block.mlp
    activation = None if ffn.gate is not None else ACTIVATIONS[ffn.activation]
    return _Layer(*attn, _norm_fn(block.mlp_norm), ffn.up, ffn.gate, ffn.down, activation)


class DecodeStep:
    """``step(token_ids (B, T), cache) -> logits (B, V)`` for one ``GPT``: the
    logits after the last token, as ``forward(token_ids, cache=cache)[:, -1]``.
    T is 1 for a decoding step, or the prompt's length for the first call.

    ``generate`` builds one per decoding call when ``DecodeStep.supports(model)``
    is None (the configuration is covered; else the reason it is not), so the
    step sees the weights as they are then. Each matmul is bound, at the first call with a given
    row count, to the kernel ``tuner`` measured fastest for its shape (see
    ``DECODE_KERNELS``; every layer has the same shapes, so the first layer's
    choice serves all). For one new token per row, those choices are kept only if a whole step
    runs faster with them than with ``F.linear`` everywhere (measured too, once per process for
    each model shape, batch size and thread count). The kernels "copy" and "row"
    (offered for one new token per row, or when forced) read an (in, out) copy of
    the weight, taken at binding and owned by the step: it goes when the step
    goes, and a change to the parameters after binding does not show through.
    With gradients enabled every matmul takes ``F.linear`` on the parameters,
    which autograd can differentiate.

    Args:
        model: the GPT (its ``supports`` reason is raised as a ValueError).
        tuner: where kernel choices are measured and kept (default: the process's).
        force: a ``DECODE_KERNELS`` name every float32 CPU matmul takes where it
            can ("row": one-row products only), unmeasured; None: measure.
    """

    @staticmethod
    def supports(model: nn.Module) -> str | None:
        """None if ``model`` is a GPT whose every module this step reproduces exactly; else why not.

        Checked by capability (this module does not import ``GPT``: ``generate`` imports it, and
        ``GPT.generate`` imports ``generate``): an ``Embedder``, a causal ``Stack`` and a Linear LM
        head, put together by ``GPT.forward`` itself (a subclass overriding it is refused)."""
        parts = (getattr(model, "embed", None), getattr(model, "decoder", None), getattr(model, "lm_head", None))
        forward = getattr(type(model).forward, "__qualname__", "")
        if not (isinstance(parts[0], Embedder) and isinstance(parts[1], Stack) and parts[1].causal
                and isinstance(parts[2], nn.Linear) and forward == "GPT.forward"):
            return f"{type(model).__name__} is not a GPT with GPT's forward"
        cfg = model.config
        if model.training and cfg.dropout > 0:
            return "dropout is active (training mode with dropout > 0); call model.eval()"
        if not model.embed.pos.supports_cache:
            return f"positional={cfg.positional!r} does not support a key/value cache"
        if model.embed.tok.max_norm is not None:
            return "the token embedding renormalises (max_norm)"
        for name, m in model.named_modules():
            if m._forward_hooks or m._forward_pre_hooks:
                return f"module {name or 'model'!r} has forward hooks, which the step would skip"
        for i, block in enumerate(model.decoder.blocks):
            if type(block) is not Block or block.cross_attn is not None:
                return f"block {i} is not a plain self-attention block"
            if type(block.attn) is not MultiHeadAttention or not block.attn.causal:
                return f"block {i} does not hold a causal MultiHeadAttention"
            if block.mlp is not None and type(block.mlp) is not FeedForward:
                return f"block {i} has a feed-forward sublayer of type {type(block.mlp).__name__}"
        return None

    def __init__(self, model: nn.Module, tuner: KernelTuner | None = None, force: str | None = None) -> None:
        reason = self.supports(model)
        if reason is not None:
            raise ValueError(f"DecodeStep cannot reproduce this model's forward: {reason}; use model(...) instead")
        if force is not None and force not in DECODE_KERNELS:
            raise ValueError(f"DecodeStep force={force!r} is not one of {DECODE_KERNELS}")
        cfg = model.config
        embed = model.embed
        self.n_layer, self.n_head, self.d_model = cfg.n_layer, cfg.n_head, cfg.d_model
        self.head_dim = cfg.d_model // cfg.n_head
        self.norm_first, self.residual = cfg.norm_first, cfg.use_residual
        self.max_len = embed.max_len
        self.tok, self.scale, self.pos, self.positions = embed.tok.weight, embed.scale, embed.pos, embed.positions
        # learned positions at the default ids start..S-1 are consecutive rows: a view, not a gather
        plain_rows = type(embed.pos) is LearnedPositions and embed.pos.scale == 1.0
        self.pos_rows = embed.pos.weight if plain_rows else None  # (max_len, C)
        # the base class's rotary/attention_bias return None: skip the calls when a scheme keeps them
        self.has_rotary = type(embed.pos).rotary is not PositionalEncoding.rotary
        self.has_bias = type(embed.pos).attention_bias is not PositionalEncoding.attention_bias
        self.layers = [_layer(b) for b in model.decoder.blocks]
        self.final_norm = _norm_fn(model.decoder.final_norm)
        self.head = model.lm_head
        self.tuner = tuner if tuner is not None else default_tuner()
        self.force = force
        self.copies: dict[int, Tensor] = {}  # id(weight) -> its (in, out) copy, owned by this step
        self._plans: dict[tuple, _Plan] = {}  # by B, T, autocast, grad mode and threads: see _plan

    def __call__(
        self,
        token_ids: Tensor,
        cache: ModelCache,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            token_ids: (B, T) the new tokens of each row: one per decoding
                step, or a whole prompt. Not read back for a range check (an
                id outside the vocabulary raises torch's IndexError from the
                embedding); ``generate`` checks them.
            cache: the model's ``ModelCache``, extended by T positions.
            attention_mask: (B, S) 1 for real tokens, cached and new, or None.
            position_ids: (B, T) positions for absolute encodings; default
                cache length onwards (as in ``forward``).
        Returns:
            logits (B, V) for the position after the last token (the only
            position whose logits decoding needs; the others are not computed).
        """
        if token_ids.dim() != 2 or token_ids.size(1) < 1:
            raise ValueError(f"token_ids must have shape (batch, new tokens), got {tuple(token_ids.shape)}")
        if len(cache.self_attn) != self.n_layer or cache.cross_attn:
            raise ValueError(f"cache has {len(cache.self_attn)} self-attention layers; this GPT has {self.n_layer}")
        B, T = token_ids.shape
        start = cache.length
        S = start + T
        check_length(S, self.max_len)
        check_mask(attention_mask, B, S, "attention_mask")
        C = self.d_model

        x = self._embed(token_ids, start, position_ids).view(B * T, C)  # (B T, C): every matmul is 2-D
        device = x.device
        # as Stack.forward: a scheme that reads position ids (place_rope) gets them
        rope = self.pos.rotary(start, T, device, position_ids) if self.has_rotary else None  # 2 x (T, D) or None
        bias = self.pos.attention_bias(start, T, S, True, device, position_ids) if self.has_bias else None
        # as in forward: without padding or bias a square causal call lets SDPA build the triangle
        is_causal = attention_mask is None and bias is None and T == S
        mask = None  # one query without padding sees every key: nothing to mask
        if attention_mask is not None or T > 1:
            mask = attention_mask_for(T, S, key_padding=attention_mask, causal=True, device=device)  # (B|1, 1, T, S)
        fused = bias is None and (mask is None or is_causal)  # SDPA's kernel, for layers with impl "fused"
        attend = _Attend(B, T, rope, mask, bias, is_causal, fused)

        key = (B, T, torch.is_autocast_enabled(device.type), torch.is_grad_enabled(), torch.get_num_threads())
        plan = self._plans.get(key)
        if plan is None:
            def trial(candidate: _Plan) -> None:  # a run whose keys and values are then forgotten
                try:
                    self._blocks(x, cache, attend, candidate)
                finally:
                    cache.crop(start)

            plan = self._plans[key] = self._plan(x, B, trial)
        return self._blocks(x, cache, attend, plan)

    def _blocks(self, x: Tensor, cache: ModelCache, attend: _Attend, plan: _Plan) -> Tensor:
        """The blocks, the final norm and the LM head on x (B T, C) with the matmuls of ``plan``: (B, V)."""
        B, T, rope, mask, bias, is_causal, fused = attend
        H, D, C = self.n_head, self.head_dim, self.d_model
        pre_residual = self.norm_first and self.residual  # the common case, inlined: x + sublayer(norm(x))
        matmuls, head = plan
        for layer, kv, (qkv_mm, out_mm, up_mm, gate_mm, down_mm) in zip(self.layers, cache.self_attn, matmuls):
            # self-attention sublayer
            h = layer.attn_norm(x) if self.norm_first else x
            qkv = qkv_mm(h)  # (B T, 3C)
            # (B, 3, H, T, D): for one token a view suffices
            qkv = qkv.view(B, 3, H, 1, D) if T == 1 else qkv.view(B, T, 3, H, D).permute(0, 2, 3, 1, 4)
            q = qkv.select(1, 0)  # (B, H, T, D)
            if rope is None:  # keys and values go to the cache in one copy
                k, v = kv.append_kv(qkv.narrow(1, 1, 2))  # 2 x (B, H, S, D)
            else:
                q, k = apply_rotary(q, *rope), apply_rotary(qkv.select(1, 1), *rope)
                k, v = kv.update(k, qkv.select(1, 2))  # (B, H, S, D)
            if fused and layer.impl == "fused":
                o = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)  # (B, H, T, D)
            else:
                o, _ = attention(q, k, v, mask, bias, 0.0, layer.impl)
            o = o.reshape(B, C) if T == 1 else o.transpose(1, 2).reshape(B * T, C)  # (B T, C)
            o = out_mm(o)  # (B T, C)
            x = x + o if pre_residual else self._residual(x, o, layer.attn_norm)
            if layer.mlp_norm is None:
                continue
            # feed-forward sublayer
            h = layer.mlp_norm(x) if self.norm_first else x
            u = up_mm(h)  # (B T, F)
            u = F.silu(u) * gate_mm(h) if layer.activation is None else layer.activation(u)  # swiglu: gated
            u = down_mm(u)  # (B T, C)
            x = x + u if pre_residual else self._residual(x, u, layer.mlp_norm)
        if T > 1:
            x = x.view(B, T, C)[:, -1]  # (B, C): norms act per position, so only the last one matters
        return head(self.final_norm(x))  # (B, V)

    def _embed(self, token_ids: Tensor, start: int, position_ids: Tensor | None) -> Tensor:
        """Token embeddings (scaled) plus positions, as ``Embedder`` computes them: (B, T, C)."""
        T = token_ids.size(1)
        x = F.embedding(token_ids, self.tok)  # (B, T, C)
        if self.scale != 1.0:
            x = x * self.scale
        if position_ids is None and self.pos_rows is not None:
            return x + self.pos_rows.narrow(0, start, T)  # the same sum as embed's x + weight[start:S]
        positions = position_ids if position_ids is not None else self.positions[start : start + T]  # (B, T) or (T,)
        return self.pos.embed(x, positions)

    def _plan(self, x: Tensor, B: int, trial: Callable[[_Plan], object]) -> _Plan:
        """Each layer's matmuls (q|k|v, out, up, gate, down) and the head's, bound to their weights
        on the kernels for rows x (B T, C): each product's fastest alone (``_kind``); for one new
        token per row, kept only if ``trial`` (a whole step) runs faster with them than with
        ``F.linear`` everywhere. A product timed alone has its weight in the CPU's caches; in a step
        it competes with every other weight, and a kernel that wins alone can lose there."""
        grad = torch.is_grad_enabled()  # with gradients on, F.linear on the parameters themselves
        threads = torch.get_num_threads()  # row_linear cuts each weight into one part per thread
        # decoding repeats one-token calls: for them, kernels on (in, out) copies and a whole-step trial;
        # a prompt runs once, and neither copying every weight nor timing whole runs pays for one call
        one_token = x.size(0) == B
        first = self.layers[0]
        kinds = {name: self._kind(x, lin, grad, one_token)
                 for name, lin in (("qkv", first.qkv), ("out", first.out), ("up", first.up), ("down", first.down))}
        kinds["head"] = self._kind(x[:B], self.head, grad, one_token)
        if one_token and self.force is None and any(kind != "torch" for kind in kinds.values()):
            plain = dict.fromkeys(kinds, "torch")
            made: dict[int, Tensor] = {}  # the trial's (in, out) copies: kept only for the plan that uses them

            def candidates() -> dict[str, Callable[[], object]]:
                return {name: functools.partial(trial, self._bind_plan(k, threads, made))
                        for name, k in (("measured", kinds), ("torch", plain))}

            up = first.up.weight.size(0) if first.up is not None else 0
            shape = (f"{self.n_layer}x{self.d_model}x{self.n_head}x{up}{'g' if first.gate is not None else ''}"
                     f"x{self.head.weight.size(0)}")  # layers, width, heads, feed-forward (g: gated), vocabulary
            key = (f"decode-step {shape} rows {B} " + ",".join(f"{name}={kind}" for name, kind in kinds.items())
                   + f" t{threads}")
            if self.tuner.choose(key, candidates, repeats=3) == "measured":
                self.copies.update(made)
            else:  # "torch", or a name this step does not know (a hand-edited kernel cache)
                kinds = plain
        return self._bind_plan(kinds, threads, self.copies)

    def _bind_plan(self, kinds: dict[str, str], threads: int, copies: dict[int, Tensor]) -> _Plan:
        layers = [tuple(self._bind(lin, kinds[name], threads, copies) for lin, name in
                        ((l.qkv, "qkv"), (l.out, "out"), (l.up, "up"), (l.gate, "up"), (l.down, "down")))
                  for l in self.layers]  # fmt: skip
        return layers, self._bind(self.head, kinds["head"], threads, copies)

    def _kind(self, x: Tensor, lin: nn.Linear | None, grad: bool, one_token: bool) -> str:
        """The kernel for rows x by ``lin``'s weight: forced, or measured by the tuner (kernels on
        a copy of the weight only for ``one_token`` calls, unless forced)."""
        if lin is None or grad:
            return "torch"
        w, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
        kinds = _eligible(x, w, copies=one_token or self.force is not None)
        if self.force is not None:
            return self.force if self.force in kinds else "torch"
        if len(kinds) == 1:
            return "torch"

        def candidates() -> dict[str, Callable[[], object]]:  # built only if the shape was not measured yet
            # trial rows from a generator of its own: measuring must not move the global RNG (sampling)
            xs = torch.randn(x.size(0), w.size(1), generator=torch.Generator().manual_seed(0))
            wt = w.t().contiguous()  # a trial copy, freed after measuring
            return {k: functools.partial(_bound(k, w, b, wt, torch.get_num_threads()), xs) for k in kinds}

        name = self.tuner.choose(self.tuner.shape_key("decode" if one_token else "decode-prompt", x, w, b, grad=False),
                                 candidates)
        return name if name in kinds else "torch"  # a recorded name this product cannot take: F.linear

    @staticmethod
    def _bind(lin: nn.Linear | None, kind: str, parts: int, copies: dict[int, Tensor]) -> Fn | None:
        """``lin`` as a function on ``kind``'s kernel; an (in, out) copy of its weight, if the kernel
        reads one, is taken from ``copies`` (id(weight) -> copy) or made there."""
        if lin is None:
            return None
        w, b = lin.weight, lin.bias
        wt = None
        if kind in ("copy", "row"):
            wt = copies.get(id(w))
            if wt is None:
                wt = copies[id(w)] = w.detach().t().contiguous()
        return _bound(kind, w, b, wt, parts)

    def _residual(self, x: Tensor, out: Tensor, norm: Fn) -> Tensor:
        """Pre-norm: x + out; post-norm: norm(x + out); without the skip, out alone."""
        y = x + out if self.residual else out
        return y if self.norm_first else norm(y)


__all__ = ["DECODE_KERNELS", "DecodeStep"]
