"""Attention maps: every layer's and head's weights, as PNG heatmaps and as bertviz pages.

``attention_maps`` runs a model once on one example and returns its
attention weights by kind: ``"encoder"`` (encoder self-attention),
``"decoder"`` (decoder self-attention, GPT's too) and ``"cross"``
(decoder-to-encoder), each a tensor (L, H, queries, keys). The fused path
(SDPA) never forms the weights, so the forward pass runs through the
written-out path, ``reference_attention`` (``written_out_attention`` switches
every attention layer of a model; tests hold the outputs equal to the fused
path's).

``plot_attention`` draws one PNG per layer and kind, one heatmap per head
with the tokens on the axes; ``write_bertviz_html`` hands the same weights to
the ``bertviz`` library (optional extra ``viz``) for its head view and model
view, interactive pages that load require.js, d3 and jQuery from a CDN.

Legend: L layers, H heads, T query positions, S key positions.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..io import atomic_write_bytes
from ..errors import ConfigError
from ..nn.attention import MultiHeadAttention
from .figure import new_figure, save_png

#: What each kind of attention is called on a plot, and its (queries, keys) token sides.
KINDS = {"encoder": "encoder self-attention", "decoder": "decoder self-attention", "cross": "cross-attention"}


@contextlib.contextmanager
def written_out_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run every attention layer of ``model`` through ``reference_attention`` (the formula written
    out, which can return its weights) inside the ``with`` block; the previous choice is restored after."""
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    before = [m.impl for m in layers]
    for m in layers:
        m.impl = "reference"
    try:
        yield model
    finally:
        for m, impl in zip(layers, before):
            m.impl = impl


def _stack(per_layer: list[dict[str, Tensor]], key: str) -> Tensor:
    return torch.stack([layer[key][0] for layer in per_layer])  # (L, H, T, S) of batch row 0


@torch.no_grad()
def attention_maps(model: nn.Module, input_ids: Tensor, decoder_input_ids: Tensor | None = None) -> dict[str, Tensor]:
    """Attention weights of one example, by kind, each (L, H, T, S).

    Args:
        model: a ``GPT``, ``EncoderClassifier`` or ``EncoderDecoder``.
        input_ids: (1, T) the text (the source, for an encoder-decoder).
        decoder_input_ids: (1, T') the decoder's input (encoder-decoder only).
    Returns:
        {"decoder"} for a GPT, {"encoder"} for an encoder classifier,
        {"encoder", "decoder", "cross"} for an encoder-decoder.
    """
    from ..models import GPT, EncoderClassifier, EncoderDecoder

    if input_ids.dim() != 2 or input_ids.size(0) != 1:
        raise ValueError(f"attention_maps takes one example, input_ids of shape (1, T); got {tuple(input_ids.shape)}")
    was_training = model.training
    model.eval()
    try:
        with written_out_attention(model):
            if isinstance(model, GPT):
                _, att = model(input_ids, output_attentions=True)
                return {"decoder": _stack(att, "self")}
            if isinstance(model, EncoderClassifier):
                _, att = model(input_ids, output_attentions=True)
                return {"encoder": _stack(att, "self")}
            if isinstance(model, EncoderDecoder):
                if decoder_input_ids is None:
                    raise ValueError("an encoder-decoder needs decoder_input_ids as well")
                _, att = model(input_ids, decoder_input_ids, output_attentions=True)
                return {
                    "encoder": _stack(att["encoder"], "self"),
                    "decoder": _stack(att["decoder"], "self"),
                    "cross": _stack(att["decoder"], "cross"),
                }
    finally:
        model.train(was_training)
    raise ConfigError(f"attention maps need a GPT, EncoderClassifier or EncoderDecoder, got {type(model).__name__}")


def token_sides(kind: str, tokens: Sequence[str], decoder_tokens: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(query tokens, key tokens) of an attention kind."""
    if kind == "encoder":
        return list(tokens), list(tokens)
    dec = list(decoder_tokens) if decoder_tokens is not None else list(tokens)
    return (dec, list(tokens)) if kind == "cross" else (dec, dec)


def plot_attention(
    maps: dict[str, Tensor],
    tokens: Sequence[str],
    out_dir: str | os.PathLike,
    decoder_tokens: Sequence[str] | None = None,
    prefix: str = "attention",
) -> list[Path]:
    """One PNG per kind and layer, ``{prefix}_{kind}_layer{i}.png``: a heatmap per head, query tokens
    down the side, key tokens along the bottom. ``tokens`` label the encoder (or GPT) positions,
    ``decoder_tokens`` the decoder's. Returns the written paths."""
    written = []
    for kind, weights in maps.items():
        queries, keys = token_sides(kind, tokens, decoder_tokens)
        L, H, T, S = weights.shape
        if (T, S) != (len(queries), len(keys)):
            raise ValueError(f"{kind} attention is {T}x{S} but there are {len(queries)}x{len(keys)} tokens")
        cols = min(H, 4)
        rows = -(-H // cols)
        cell = max(2.6, 0.28 * max(T, S) + 1.2)
        for layer in range(L):
            fig = new_figure(cell * cols, cell * rows + 0.4)
            for h in range(H):
                ax = fig.add_subplot(rows, cols, h + 1)
                ax.imshow(weights[layer, h].float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0,
                          aspect="auto", interpolation="nearest")
                ax.set_xticks(range(S), keys, rotation=90, fontsize=7)
                ax.set_yticks(range(T), queries, fontsize=7)
                ax.set_title(f"head {h}", fontsize=9)
            fig.suptitle(f"{KINDS[kind]}, layer {layer}")
            written.append(save_png(fig, Path(out_dir) / f"{prefix}_{kind}_layer{layer}.png"))
    return written


def write_bertviz_html(
    maps: dict[str, Tensor],
    tokens: Sequence[str],
    out_dir: str | os.PathLike,
    decoder_tokens: Sequence[str] | None = None,
    prefix: str = "attention",
) -> list[Path]:
    """bertviz's head view and model view of ``maps`` as two pages,
    ``{prefix}_head_view.html`` and ``{prefix}_model_view.html``. Returns their paths.

    Raises:
        ConfigError: bertviz is not installed (``pip install 'scratchformer[viz]'``).
    """
    try:
        from bertviz import head_view, model_view
    except ImportError:
        raise ConfigError("the interactive attention pages need bertviz: pip install 'scratchformer[viz]'") from None
    as_bertviz = {kind: [w[None] for w in weights] for kind, weights in maps.items()}  # L x (1, H, T, S)
    if set(maps) == {"encoder", "decoder", "cross"}:
        args = dict(encoder_attention=as_bertviz["encoder"], decoder_attention=as_bertviz["decoder"],
                    cross_attention=as_bertviz["cross"], encoder_tokens=list(tokens),
                    decoder_tokens=list(decoder_tokens or []))
    elif len(maps) == 1:
        (only,) = as_bertviz.values()
        args = dict(attention=only, tokens=list(tokens))
    else:
        raise ValueError(f"write_bertviz_html takes one self-attention kind or all three, got {sorted(maps)}")
    written = []
    for name, view in (("head_view", head_view), ("model_view", model_view)):
        html = view(**args, html_action="return").data
        page = f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{name.replace('_', ' ')}</title></head>\n<body>\n{html}\n</body></html>\n"
        path = Path(out_dir) / f"{prefix}_{name}.html"
        atomic_write_bytes(path, page.encode("utf-8"))
        written.append(path)
    return written


__all__ = ["KINDS", "attention_maps", "plot_attention", "token_sides", "write_bertviz_html", "written_out_attention"]
