"""Looking inside a KAN: the learned univariate functions phi of each edge, as numbers and as PNGs.

A KAN conv computes, before its norm and activation, for output o (the sum runs over the inputs j
of o's group and over the kernel taps k)::

    y_o = sum_j sum_k [ W[o, 0, j, k] * base(x_j) + sum_f W[o, f, j, k] * B_f(prepare(x_j)) ]

so the edge j -> o carries phi_oj(x) = basis part + base part, with the kernel taps summed (what
the edge does to a patch where channel j is constant). :func:`edge_functions` evaluates both parts
on a grid of x; :func:`edge_scores` ranks the edges by how nonlinear they are; :func:`plot_layer`
draws them with matplotlib (Agg, no display). Command line::

    python -m kan_zoo.viz MODEL_OR_CHECKPOINT [--layer NAME --out phi.png] [--scores scores.png]

Supported: KANConv1d/2d/3d (every basis, groups), KANLinear, and BottleneckKANConv*d, whose basis
acts on the INNER channels (after the 1x1 squeeze): its edges are inner -> inner, and its base branch
(outer input -> output) is returned but not overlaid. For rbf the basis argument is the layer's
input norm applied to x (the basis curve is drawn against that normalized value, its base
curve against the raw x). Wavelet layers are
supported: phi_pj(x) = sum_o mix[p, o] * sum_k w[o, j, k] * psi((x - tau_oj) / s_oj).
Any other module raises TypeError.

The x grid: bases that squash x first (tanh: gram, chebyshev, legendre, jacobi; sigmoid: bernstein)
use the x where prepare(x) covers 1%..99% of its range (|x| <= 2.3 for tanh, 4.6 for sigmoid);
beyond it every function is flat. Grid bases use their support: the B-spline knots, the rbf centres
+- one width, the ReLU phases, the wavelet centres +- 3 scales. ``x_range=`` overrides it.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .layers.bases.wavelet import WAVELETS
from .layers.bottleneck import BottleneckKANConvNd
from .layers.conv import KANConvNd

__all__ = [
    "EdgeFunctions", "edge_functions", "edge_scores", "kan_layers", "summarize", "format_summary",
    "default_x_range", "plot_layer", "plot_scores", "load_model", "main",
]


@dataclass
class EdgeFunctions:
    """phi of every edge of one layer on the grid ``x``.

    ``basis[o, j]`` is the basis part of the edge from input ``inputs[o, j]`` to output o (j runs over
    the c inputs of o's group, so grouped layers have no entries for edges that do not exist).
    ``base[o, j]`` is the base branch on edge ``base_inputs[o, j]`` -> o, or None (chebyshev).
    For a bottleneck layer ``basis``/``inputs`` index the inner channels and ``inner`` is True.
    """

    x: torch.Tensor  # (P,) the grid the basis argument runs over
    basis: torch.Tensor  # (O, c, P)
    inputs: torch.Tensor  # (O, c) global input channel of each basis edge
    base: Optional[torch.Tensor]  # (O', c', P) or None
    base_inputs: Optional[torch.Tensor]  # (O', c')
    inner: bool = False
    label: str = "x"  # what the x axis is

    @property
    def num_outputs(self) -> int:
        return self.basis.shape[0]


def _squash_range(basis: nn.Module) -> Optional[Tuple[float, float]]:
    """Where a bounded prepare (tanh, sigmoid) covers 1%..99% of its range; None if prepare is unbounded."""
    wide = torch.linspace(-50.0, 50.0, 20001, dtype=torch.float64)
    t = basis.prepare(wide.reshape(1, 1, -1)).reshape(-1)
    lo, hi = float(t.min()), float(t.max())
    if hi - lo > 50.0:  # grows with x: no saturation, no natural window
        return None
    inside = (t >= lo + 0.01 * (hi - lo)) & (t <= hi - 0.01 * (hi - lo))
    xs = wide[inside]
    return float(xs.min()), float(xs.max())


def default_x_range(layer: KANConvNd) -> Tuple[float, float]:
    """The x interval over which the layer's basis functions vary (see the module docstring)."""
    b = layer.basis
    if b.name == "bspline":
        return float(b.grid[0]), float(b.grid[-1])
    if b.name == "rbf":
        width = 1.0 / float(b.inv_width)
        return float(b.grid[0]) - width, float(b.grid[-1]) + width
    if b.name == "relu":
        return float(b.phase_low.min()), float(b.phase_high.max())
    if b.name == "wavelet":
        tau, s = b.translation.detach(), b.scale.detach().abs()
        return float((tau - 3 * s).min()), float((tau + 3 * s).max())
    return _squash_range(b) or (-3.0, 3.0)


def _grid_input(layer: KANConvNd, x: torch.Tensor, channels: int) -> torch.Tensor:
    """(P,) -> (P, channels, 1, ...): every channel gets the whole grid, one position per sample."""
    shape = (x.numel(), 1) + (1,) * layer.ndim
    return x.reshape(shape).expand((x.numel(), channels) + (1,) * layer.ndim)


def _group_inputs(out_channels: int, groups: int, per_group: int) -> torch.Tensor:
    """(O, c): the global input index of local input j for output o (input j of group g feeds only g)."""
    group = torch.arange(out_channels) // (out_channels // groups)
    return group[:, None] * per_group + torch.arange(per_group)[None, :]


@torch.no_grad()
def edge_functions(
    layer: nn.Module, *, x_range: Optional[Tuple[float, float]] = None, num_points: int = 201
) -> EdgeFunctions:
    """phi_oj on ``num_points`` values of x for every edge of a KAN layer (basis and base parts apart)."""
    if not isinstance(layer, KANConvNd):
        raise TypeError(
            f"{type(layer).__name__} is not a KAN layer; kan_zoo.viz supports KANConv1d/2d/3d, "
            "KANLinear and BottleneckKANConv1d/2d/3d"
        )
    lo, hi = x_range if x_range is not None else default_x_range(layer)
    w = next(iter(layer.parameters()))
    x = torch.linspace(lo, hi, num_points, dtype=w.dtype, device=w.device)
    if not layer.basis.separable:
        return _wavelet_edges(layer, x)

    groups, bottleneck = layer.groups, isinstance(layer, BottleneckKANConvNd)
    coeffs = layer.coefficients().flatten(3).sum(-1)  # (O, F, c): taps summed
    out_channels, _, per_group = coeffs.shape
    channels = per_group * groups
    u = _grid_input(layer, x, channels)
    # The layer's own basis code, so the curves are what forward computes (rbf: u is the normalized input).
    funcs = torch.stack([f.reshape(num_points, channels) for f in layer.basis.expand(layer.basis.prepare(u))])
    inputs = _group_inputs(out_channels, groups, per_group)
    first = int(layer.base_folded)
    # Group by group (never an (O, c, K, P) tensor: that is gigabytes on wide layers).
    w_groups = coeffs[:, first:].unflatten(0, (groups, -1))  # (G, o, K, c)
    f_groups = funcs.unflatten(2, (groups, per_group))  # (K, P, G, c)
    basis = torch.cat([torch.einsum("okc,kpc->ocp", w_groups[g], f_groups[:, :, g]) for g in range(groups)])

    base = base_inputs = None
    if layer.has_base:
        act = layer.basis.base(x)  # (P,), the same for every channel
        if bottleneck:  # the base branch has its own (C_out, c_in, *k) weight over the OUTER channels
            base_w = layer.base_weight.flatten(2).sum(-1)
            base_inputs = _group_inputs(layer.out_channels, groups, layer.in_channels // groups)
        else:
            base_w, base_inputs = coeffs[:, 0], inputs
        base = base_w[..., None] * act
    label = "normalized input" if layer.basis.normalizes_input else "x"
    return EdgeFunctions(x, basis, inputs, base, base_inputs, inner=bottleneck, label=label)


def _wavelet_edges(layer: KANConvNd, x: torch.Tensor) -> EdgeFunctions:
    """phi_pj = sum_o mix[p, o] * wsum[o, j] * psi((x - tau_oj) / s_oj) over the outputs o of p's group."""
    b = layer.basis
    out_channels, per_group = b.scale.shape
    o_per_group = out_channels // b.groups
    psi = WAVELETS[b.wavelet_type]((x - b.translation[..., None]) / b.scale[..., None])  # (O, c, P)
    wave = b.wavelet_weight.flatten(2).sum(-1)[..., None] * psi  # depthwise taps summed
    mix = b.mix_weight.flatten(1)  # (O, o): output p mixes the o wavelet outputs of its group
    blocks = zip(mix.split(o_per_group), wave.split(o_per_group))  # one (o, o) mix and (o, c, P) block per group
    basis = torch.cat([torch.einsum("pq,qjx->pjx", m, w) for m, w in blocks])
    inputs = _group_inputs(out_channels, b.groups, per_group)
    base = None
    if layer.has_base:
        base = layer.coefficients()[:, 0].flatten(2).sum(-1)[..., None] * b.base(x)
    return EdgeFunctions(x, basis, inputs, base, inputs if base is not None else None)


def edge_scores(edges: EdgeFunctions) -> Dict[str, torch.Tensor]:
    """Per-edge (O, c) scores over the grid.

    ``l1``: mean |basis part - its mean| (how much the learned functions move; the KAN paper's L1).
    ``nonlinearity``: RMS of phi (basis + base, where they share the edge) after removing its
    least-squares straight line: the part of the edge no linear layer could do.
    """
    phi = edges.basis
    if edges.base is not None and not edges.inner:
        phi = phi + edges.base
    x = edges.x - edges.x.mean()
    centered = phi - phi.mean(-1, keepdim=True)
    slope = (centered * x).sum(-1, keepdim=True) / (x * x).sum()
    residual = centered - slope * x
    return {
        "l1": (edges.basis - edges.basis.mean(-1, keepdim=True)).abs().mean(-1),
        "nonlinearity": residual.pow(2).mean(-1).sqrt(),
    }


def kan_layers(model: nn.Module) -> Dict[str, KANConvNd]:
    """name -> layer for every KAN layer in a model (the names ``--layer`` accepts)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, KANConvNd)}


def summarize(model: nn.Module, *, top: int = 3, num_points: int = 201) -> List[dict]:
    """One row per KAN layer: its edges, mean scores, the share of nonlinearity held by the top 10%
    of edges (1.0: a few edges do all of it), and the ``top`` most nonlinear edges as (in, out, score)."""
    rows = []
    for name, layer in kan_layers(model).items():
        edges = edge_functions(layer, num_points=num_points)
        s = edge_scores(edges)
        nl = s["nonlinearity"].flatten()
        order = nl.argsort(descending=True)
        k10 = max(1, math.ceil(0.1 * nl.numel()))
        share = float(nl[order[:k10]].sum() / nl.sum().clamp_min(1e-30))
        c = edges.basis.shape[1]
        best = [(int(edges.inputs.flatten()[i]), int(i) // c, float(nl[i])) for i in order[:top]]
        rows.append(dict(
            layer=name, type=type(layer).__name__, basis=layer.basis.name, edges=nl.numel(), inner=edges.inner,
            mean_l1=float(s["l1"].mean()), mean_nonlinearity=float(nl.mean()), top10_share=share, top_edges=best,
        ))
    return rows


def format_summary(rows: Sequence[dict]) -> str:
    lines = [f"{'layer':<28} {'type':<20} {'basis':<10} {'edges':>6} {'mean L1':>9} {'mean NL':>9} "
             f"{'top10%':>7}  most nonlinear edges (in->out: NL)"]
    for r in rows:
        tops = ", ".join(f"{i}->{o}: {v:.3g}" for i, o, v in r["top_edges"])
        name = r["layer"] + (" (inner)" if r["inner"] else "")
        lines.append(f"{name:<28} {r['type']:<20} {r['basis']:<10} {r['edges']:>6} {r['mean_l1']:>9.4f} "
                     f"{r['mean_nonlinearity']:>9.4f} {r['top10_share']:>7.1%}  {tops}")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window (servers, CI)
    import matplotlib.pyplot as plt

    return plt


def plot_layer(
    layer: nn.Module,
    out: Union[str, Path],
    *,
    outputs: Optional[Sequence[int]] = None,
    max_outputs: int = 6,
    max_inputs: int = 6,
    x_range: Optional[Tuple[float, float]] = None,
    title: Optional[str] = None,
) -> Path:
    """PNG of phi for a grid of edges: rows are outputs, columns inputs of their group.

    By default the ``max_outputs`` outputs with the most nonlinearity, and in each row the
    ``max_inputs`` most nonlinear inputs. Solid: basis part; dashed: base branch (drawn apart).
    """
    edges = edge_functions(layer, x_range=x_range)
    nl = edge_scores(edges)["nonlinearity"]
    rows = list(outputs) if outputs is not None else nl.sum(1).argsort(descending=True)[:max_outputs].tolist()
    per_row = min(max_inputs, edges.basis.shape[1])
    panels = [(o, j) for o in rows for j in nl[o].argsort(descending=True)[:per_row].tolist()]
    # One row per output; a layer with one input per group would be a single column: wrap it instead.
    ncols = per_row if per_row > 1 else min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    plt = _pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 1.8 * nrows + 0.4), squeeze=False, sharex=True)
    x = edges.x.cpu().numpy()
    overlay_base = edges.base is not None and not edges.inner
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (o, j) in zip(axes.flat, panels):
        ax.plot(x, edges.basis[o, j].cpu().numpy(), color="C0", lw=1.5)
        if overlay_base:
            ax.plot(x, edges.base[o, j].cpu().numpy(), color="C1", lw=1.0, ls="--")
        ax.axhline(0, color="0.8", lw=0.5)
        ax.set_title(f"in {int(edges.inputs[o, j])} -> out {o}  NL {float(nl[o, j]):.2g}", fontsize=7)
        ax.tick_params(labelsize=6, labelbottom=True)
    kind = "inner channels of the bottleneck (base branch not shown)" if edges.inner else (
        "solid: basis part, dashed: base branch" if overlay_base else "basis part (no base branch)")
    fig.suptitle(f"{title or type(layer).__name__} [{layer.basis.name}]: phi(x), kernel taps summed; {kind}",
                 fontsize=8)
    fig.supxlabel(edges.label, fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_scores(model: nn.Module, out: Union[str, Path], *, max_layers: int = 8) -> Path:
    """PNG of per-edge nonlinearity heatmaps (outputs x inputs of the group), one panel per KAN layer."""
    layers = list(kan_layers(model).items())[:max_layers]
    if not layers:
        raise ValueError("the model has no KAN layers")
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(layers), figsize=(3.0 * len(layers), 3.2), squeeze=False)
    for ax, (name, layer) in zip(axes[0], layers):
        edges = edge_functions(layer)
        img = ax.imshow(edge_scores(edges)["nonlinearity"].cpu().numpy(), aspect="auto", cmap="viridis")
        ax.set_title(name + (" (inner)" if edges.inner else ""), fontsize=8)
        ax.set_xlabel("input (within group)", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("output", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(img, ax=ax, fraction=0.046)
    fig.suptitle("nonlinearity per edge (RMS of phi after removing its best straight line)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def load_model(spec: str, *, arch: Optional[str] = None, in_chans: Optional[int] = None) -> nn.Module:
    """A model from a timm name (random weights), ``hf-hub:``/``local-dir:`` name or exported folder
    (pretrained), or a .safetensors/.pth/.pt state dict file (e.g. a training checkpoint's
    model.safetensors) together with ``arch`` (and ``in_chans`` if not 3; classes are read from it)."""
    import timm

    from . import models  # noqa: F401  registers the kan_* architectures

    path = Path(spec)
    if path.is_dir():
        return timm.create_model(f"local-dir:{path.resolve()}", pretrained=True).eval()
    if path.is_file():
        if arch is None:
            raise ValueError(f"{spec} is a weights file: also pass --arch MODEL_NAME (its architecture)")
        if path.suffix == ".safetensors":
            import safetensors.torch

            state = safetensors.torch.load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        extra = {"in_chans": in_chans} if in_chans is not None else {}
        model = timm.create_model(arch, pretrained=False, num_classes=_num_classes(state), **extra)
        model.load_state_dict(state)
        return model.eval()
    if spec.startswith(("hf-hub:", "local-dir:")):
        return timm.create_model(spec, pretrained=True).eval()
    return timm.create_model(spec, pretrained=False).eval()


def _num_classes(state: Dict[str, torch.Tensor]) -> int:
    """The class count of a state dict: rows of its last 2-D weight (the classifier)."""
    mats = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return int(mats[-1].shape[0]) if mats else 1000


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kan_zoo.viz", description=__doc__.splitlines()[0])
    p.add_argument("model", help="timm model name, hf-hub:/local-dir: name, exported folder, or weights file")
    p.add_argument("--arch", help="architecture of a weights file (e.g. kan_test_vgg_gram)")
    p.add_argument("--in-chans", type=int, help="input channels of a weights file's model (default 3)")
    p.add_argument("--layer", help="KAN layer to plot (names: run without --layer)")
    p.add_argument("--out", help="PNG for --layer's edge functions")
    p.add_argument("--scores", help="PNG of per-edge nonlinearity heatmaps for the model's first KAN layers")
    p.add_argument("--outputs", type=int, nargs="+", help="output channels to plot (default: most nonlinear)")
    p.add_argument("--x-range", type=float, nargs=2, metavar=("LO", "HI"))
    args = p.parse_args(argv)

    try:
        model = load_model(args.model, arch=args.arch, in_chans=args.in_chans)
    except ValueError as e:  # a weights file without --arch: say so without a traceback
        p.error(str(e))
    layers = kan_layers(model)
    if not layers:
        p.error(f"{args.model} has no KAN layers")
    print(format_summary(summarize(model)))
    if args.layer is not None:
        if args.layer not in layers:
            p.error(f"no KAN layer {args.layer!r}; KAN layers: {', '.join(layers)}")
        out = Path(args.out or f"{args.layer.replace('.', '_')}.png")
        plot_layer(layers[args.layer], out, outputs=args.outputs, x_range=args.x_range,
                   title=f"{getattr(model, 'pretrained_cfg', {}).get('architecture') or args.model}: {args.layer}")
        print(f"wrote {out}")
    elif args.out:
        p.error("--out needs --layer NAME")
    if args.scores:
        print(f"wrote {plot_scores(model, args.scores)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
