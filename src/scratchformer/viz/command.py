"""``scratchformer viz``: attention maps, positional encodings and training curves.

Each subcommand prints the path of every file it writes, one per line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

VIZ_EPILOG = """\
examples:
  scratchformer viz attention runs/addition "123+456="          PNG heatmaps + bertviz pages in runs/addition/plots
  scratchformer viz attention path/to/hf-gpt2-dir "Hello there" --out plots/gpt2
  scratchformer viz positional sinusoidal --length 64 --d-model 64
  scratchformer viz positional rope --head-dim 32
  scratchformer viz positional runs/addition                     a run's learned position table
  scratchformer viz curves runs/a runs/b --out curves.png        several runs overlaid
"""


def add_viz_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``viz`` and its subcommands to the ``scratchformer`` parser's subparsers ``sub``."""
    viz = sub.add_parser(
        "viz",
        help="draw attention maps, positional encodings and training curves",
        description="Draw pictures of a run or a model: attention maps (PNG + interactive HTML), "
        "positional encodings, training curves. Every file written is printed.",
        epilog=VIZ_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
    )
    kinds = viz.add_subparsers(dest="viz_command", metavar="what", parser_class=type(viz))

    p = kinds.add_parser(
        "attention",
        help="attention weights of every layer and head for one text",
        description="Run the model on TEXT and draw every layer's and head's attention weights: one PNG per "
        "layer (a heatmap per head, tokens on the axes) and bertviz's head view and model view as HTML pages "
        "(needs the `viz` extra). For an encoder-decoder run TEXT is the source, the decoder input is the "
        "model's greedy output, and encoder, decoder and cross-attention are all drawn.",
        epilog=VIZ_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
    )
    p.add_argument("model_dir", metavar="RUN_OR_HF_DIR",
                   help="a run directory, or a Hugging Face-format GPT-2 or BERT directory with its tokenizer files")
    p.add_argument("text", metavar="TEXT", help="the input text")
    p.add_argument("--out", metavar="DIR", help="where to write (default: RUN_DIR/plots, or ./plots for a HF directory)")
    p.add_argument("--no-html", action="store_true", help="only the PNG heatmaps (no bertviz pages)")
    p.add_argument("--best", action="store_true", help="a run's best.safetensors instead of model.safetensors")

    p = kinds.add_parser(
        "positional",
        help="a positional encoding's table, or RoPE's relative score pattern",
        description="Draw a positional encoding: for sinusoidal, sinusoidal_xl or a run's learned positions the "
        "table as a heatmap and its first dimensions as waves; for rope the score of one query and key at every "
        "pair of positions, which depends only on their offset.",
        epilog=VIZ_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
    )
    p.add_argument("name", metavar="NAME_OR_RUN_DIR",
                   help="sinusoidal, sinusoidal_xl, rope, or a run directory whose model has learned positions")
    p.add_argument("--length", type=int, default=64, help="positions to draw (default 64)")
    p.add_argument("--d-model", type=int, default=64, help="table width for sinusoidal schemes (default 64)")
    p.add_argument("--head-dim", type=int, default=32, help="head width for rope (default 32)")
    p.add_argument("--waves", type=int, default=4, help="how many first dimensions to draw as waves (default 4)")
    p.add_argument("--out", metavar="FILE", help="the PNG to write (default: positional_NAME.png, or RUN_DIR/plots/positional.png)")

    p = kinds.add_parser(
        "curves",
        help="loss, accuracy and learning rate against the step, runs overlaid",
        description="Draw the training curves of one or more runs from their metrics.jsonl: loss (train and "
        "evaluation), accuracy (training accuracy and the evaluation metric), learning rate.",
        epilog=VIZ_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
    )
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run directories written by `scratchformer train`")
    p.add_argument("--out", metavar="FILE", help="the PNG to write (default: RUN_DIR/plots/curves.png for one run, "
                   "curves.png for several)")
    p.add_argument("--label", action="append", help="legend name of each run, in order (default: directory names)")
    p.add_argument("--title", default="", help="figure title")


def cmd_viz(args: argparse.Namespace) -> int:
    if args.viz_command is None:
        raise ConfigError("say what to draw: `scratchformer viz attention|positional|curves ...` (see --help)")
    return {"attention": _attention, "positional": _positional, "curves": _curves}[args.viz_command](args)


def _curves(args: argparse.Namespace) -> int:
    from .curves import plot_curves

    if args.out:
        out = Path(args.out)
    elif len(args.run_dirs) == 1:
        out = Path(args.run_dirs[0]) / "plots" / "curves.png"
    else:
        out = Path("curves.png")
    print(plot_curves(args.run_dirs, out, labels=args.label, title=args.title))
    return 0


def _positional(args: argparse.Namespace) -> int:
    from . import positional as P

    for name in ("length", "d_model", "head_dim"):
        if getattr(args, name) < 2:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 2")
    if args.waves < 1:
        raise ConfigError(f"--waves={args.waves} must be at least 1")
    name = args.name
    if name == "rope":
        if args.head_dim % 2:
            raise ConfigError(f"--head-dim={args.head_dim} must be even for rope (dimensions rotate in pairs)")
        out = Path(args.out or "positional_rope.png")
        print(P.plot_rope_scores(out, length=args.length, head_dim=args.head_dim))
        return 0
    if name in P.TABLE_SCHEMES:
        if args.d_model % 2:
            raise ConfigError(f"--d-model={args.d_model} must be even for {name}")
        table = P.positional_table(name, args.length, args.d_model)
        out = Path(args.out or f"positional_{name}.png")
        print(P.plot_positional_table(table, out, f"{name} positional encoding (C={args.d_model})", args.waves))
        return 0
    if Path(name, "config.json").is_file():
        from ..train.run import load_run

        run = load_run(name)
        table = P.learned_table(run.model)[: args.length]
        out = Path(args.out) if args.out else Path(name) / "plots" / "positional.png"
        print(P.plot_positional_table(table, out, f"learned positions of {Path(name).name}", args.waves))
        return 0
    from ..errors import did_you_mean

    raise ConfigError(
        f"{name!r} is neither a positional scheme with a picture ({', '.join(P.PLOTTABLE)}) nor a run directory"
        f"{did_you_mean(name, P.PLOTTABLE)}; alibi and none have no table to draw"
    )


def _attention(args: argparse.Namespace) -> int:
    import torch

    from .attention import attention_maps, plot_attention, write_bertviz_html

    source = load_for_attention(args.model_dir, best=args.best)
    if not args.text:
        raise ConfigError("TEXT is empty; give some text to run the model on")
    ids, tokens = source.encode(args.text)
    x = torch.tensor([ids], dtype=torch.long)
    decoder_ids, decoder_tokens = None, None
    if source.arch == "encoder_decoder":
        decoder_ids, decoder_tokens = source.decoder_input(x)
    maps = attention_maps(source.model, x, decoder_ids)
    out = Path(args.out) if args.out else source.default_out
    for path in plot_attention(maps, tokens, out, decoder_tokens):
        print(path)
    if not args.no_html:
        for path in write_bertviz_html(maps, tokens, out, decoder_tokens):
            print(path)
    return 0


class AttentionSource:
    """A model and how to turn text into its ids and token labels."""

    def __init__(self, model, tokenizer, arch: str, default_out: Path, bos_first: bool, strict_vocab: bool,
                 eos_last: bool = False) -> None:
        self.model, self.tokenizer, self.arch = model, tokenizer, arch
        self.default_out, self.bos_first, self.strict_vocab, self.eos_last = default_out, bos_first, strict_vocab, eos_last

    def encode(self, text: str) -> tuple[list[int], list[str]]:
        tok = self.tokenizer
        ids = list(tok.encode(text))
        if self.bos_first and tok.bos_token_id is not None and (not ids or ids[0] != tok.bos_token_id):
            ids = [tok.bos_token_id, *ids]
        if self.eos_last and tok.eos_token_id is not None:
            ids = [*ids, tok.eos_token_id]
        unk = getattr(tok, "unk_token_id", None)
        if self.strict_vocab and unk is not None and unk in ids:
            raise ConfigError(f"the text {text!r} has characters outside the model's vocabulary; use only symbols it knows")
        if not ids:
            raise ConfigError("the text encodes to no tokens; give some text")
        return ids, [tok.id_to_token(i) for i in ids]

    def decoder_input(self, x):
        """The greedy output of an encoder-decoder for x, with its start token: (ids (1, T'), labels)."""
        model, tok = self.model, self.tokenizer
        max_new = min(32, model.config.max_len - 1)
        out = model.generate(encoder_input_ids=x, max_new_tokens=max_new, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        row = out[0].tolist()
        if tok.eos_token_id is not None and tok.eos_token_id in row[1:]:
            row = row[: row.index(tok.eos_token_id, 1) + 1]
        start = model.config.start_token_id
        labels = ["<start>" if i == start and i >= tok.vocab_size else tok.id_to_token(i) for i in row]
        import torch

        return torch.tensor([row], dtype=torch.long), labels


def load_for_attention(model_dir: str, best: bool = False) -> AttentionSource:
    """A run directory or a Hugging Face directory, ready for ``viz attention``."""
    from ..interop.hf_dir import looks_like_hub_name, resolve_model_dir

    path = Path(model_dir)
    if not path.exists() and looks_like_hub_name(model_dir):
        path = resolve_model_dir(model_dir)
    if not path.is_dir():
        raise ConfigError(f"{model_dir!r} is not a directory (a run directory or a Hugging Face model directory)")
    from ..interop.hf_dir import is_hf_dir, load_hf_dir

    if is_hf_dir(path):
        hf = load_hf_dir(path)
        bert = hf.arch == "encoder_classifier"  # BERT reads [CLS] text [SEP]
        return AttentionSource(hf.model, hf.tokenizer, hf.arch, Path("plots"), bos_first=bert, strict_vocab=False,
                               eos_last=bert)
    from ..train.run import load_run

    run = load_run(path, weights="best" if best else "model")
    if run.tokenizer is None:
        raise ConfigError(f"{model_dir} has no tokenizer.json, so text cannot be encoded")
    if run.arch not in ("gpt", "encoder_classifier", "encoder_decoder"):
        raise ConfigError(f"{model_dir} is a {run.arch!r} run, which has no attention to draw")
    info = _task_info(path)
    bos_first = bool(info.get("bos_first")) or run.arch == "encoder_classifier"
    return AttentionSource(run.model, run.tokenizer, run.arch, path / "plots", bos_first, strict_vocab=True)


def _task_info(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "task.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
