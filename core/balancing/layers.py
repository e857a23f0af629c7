"""Layer-wise Gramians: a shared layer's share of ``J J^T`` from its inputs and output gradients.

For a linear map ``y = W a`` applied at N positions (samples, tokens, conv output pixels), task k's
weight gradient is ``G_k = D_k^T P`` with ``P`` (N x I) the inputs (conv: unfolded patches) and
``D_k`` (N x O) the gradients w.r.t. the outputs. Its Gramian entries need no ``G_k``:

    <G_i, G_j> = sum(D_i * (A @ D_j)),   A = P P^T  (N x N; a bias adds 1 to every entry)

and the weighted update is one product, ``(sum_k w_k D_k)^T P``. Per task this costs a backward
that stops at the layer's output instead of computing its weight gradient, then
``N^2 (I + K O) + N O I`` for the layer, against ``K N O I`` for K weight gradients: far cheaper
where a layer has few positions and many channels (a CNN's last stages, an MLP on a small batch),
dearer where positions dominate (early conv stages, long sequences). :func:`plan` chooses per layer
and per step from the shapes; memory is bounded by ``max_positions``. The gradients of the K tasks
are never held for the layers it takes: that is where a CNN keeps most of its parameters.

Idea from torchjd's autogram engine (Gramian from activations and output gradients, Quinton &
Rey, 2025); the per-layer choice and the closed forms here are ours. Exact for ``nn.Linear`` and
``nn.Conv2d`` (zero padding, any groups) whose parameters belong to that module alone and are read
only by its calls: a layer whose weight the losses also reach another way (a tied decoder, a
penalty on the weight) is left to the exact per-task gradients. A grouped convolution is g such maps
side by side, each reading its own channels: every product above is taken group by group.

Per-sample losses of independent samples (:func:`sample_rows`) also cover affine ``GroupNorm`` /
``InstanceNorm`` / ``LayerNorm`` weights (``y = x_hat * weight + bias``: a sample's weight gradient is
its ``sum D * x_hat``). Output gradients are taken at the edge each call returned, so an in-place
activation or residual add on a layer's output afterwards (torchvision's ``ReLU(inplace=True)``,
``out += identity``) leaves them exact.
"""

from __future__ import annotations

import functools
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils.hooks import RemovableHandle

_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _instance_norm(module: nn.Module, x: Tensor) -> Tensor:
    if module.training or not module.track_running_stats:  # each sample's own statistics
        return F.instance_norm(x, eps=module.eps)
    shape = (1, -1, *([1] * (x.ndim - 2)))
    return (x - module.running_mean.view(shape)) / (module.running_var.view(shape) + module.eps).sqrt()


#: affine norm layers by exact type: the input normalised without the affine part (``x_hat``);
#: ``y = x_hat * weight + bias`` per channel, so a sample's weight gradient is its ``sum D * x_hat``.
#: Per-sample Gramians only: their weights are small, the multi-task path keeps them direct.
NORMS: dict[type[nn.Module], Callable[[nn.Module, Tensor], Tensor]] = {
    nn.GroupNorm: lambda m, x: F.group_norm(x, m.num_groups, eps=m.eps),
    nn.LayerNorm: lambda m, x: F.layer_norm(x, m.normalized_shape, eps=m.eps),
    **dict.fromkeys(_INSTANCE_NORMS, _instance_norm),
}


def _eligible(module: nn.Module) -> bool:
    if type(module) is nn.Linear:  # exact types: subclasses may change what forward computes
        return True
    if type(module) is nn.Conv2d:
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return is_norm(module) and getattr(module, "weight", None) is not None


def is_norm(module: nn.Module) -> bool:
    return type(module) in NORMS


def channels(module: nn.Module) -> int:
    """The width of a row of :func:`positions`: output features, output channels, or a norm's weight."""
    return module.weight.numel() if is_norm(module) else module.weight.shape[0]


def groups(module: nn.Module) -> int:
    return module.groups if isinstance(module, nn.Conv2d) else 1


def by_group(rows: Tensor, g: int) -> Tensor:
    """N x C rows as g x N x C/g: group g of a grouped conv reads (and writes) only its channels, which
    are contiguous in :func:`patches` and :func:`positions`."""
    return rows.view(rows.shape[0], g, -1).transpose(0, 1)


def weight_product(module: nn.Module, combined: Tensor, rows: Tensor) -> Tensor:
    """``combined^T @ rows`` group by group, shaped as the module's weight (a sum of weight gradients)."""
    g = groups(module)
    return (by_group(combined, g).transpose(1, 2) @ by_group(rows, g)).reshape(module.weight.shape)


def patches(module: nn.Module, x: Tensor) -> Tensor:
    """The layer's inputs as N x I rows: what its weight multiplies at each output position."""
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B * L, C * kh * kw), the weight's order
    return x.reshape(-1, x.shape[-1])


def positions(module: nn.Module, grad: Tensor) -> Tensor:
    """An output gradient as N x O rows, matching :func:`patches`."""
    if isinstance(module, nn.Conv2d):
        return grad.flatten(2).transpose(1, 2).reshape(-1, grad.shape[1])
    return grad.reshape(-1, grad.shape[-1])


@dataclass
class Layer:
    """One shared layer in one forward: its calls' inputs and outputs.

    The output gradients are taken at each call's gradient edge (the output's autograd node when the
    call returned), so an in-place op on the output afterwards (``ReLU(inplace=True)``, a residual
    ``out += x``) does not turn them into the gradient w.r.t. the op's result.
    """

    module: nn.Module
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)  # their shapes; their values may change in place
    versions: list[int] = field(default_factory=list)  # each input's version at the call
    sources: list[object] = field(default_factory=list)  # the input's autograd node at the call
    edges: list[GradientEdge] = field(default_factory=list)  # each output's gradient edge at the call

    def intact(self) -> bool:
        """No input changed in place since the call: the recorded activations are the ones used."""
        return [x._version for x in self.inputs] == self.versions

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in (self.module.weight, self.module.bias) if p is not None]

    def n_positions(self) -> int:
        return sum(y.numel() // self.module.weight.shape[0] for y in self.outputs)

    def cost(self, k: int) -> tuple[int, int]:  # Linear / Conv2d
        """Multiply-adds of (K weight gradients, the Gramian from activations + one weighted product)."""
        n, o = self.n_positions(), self.module.weight.shape[0]
        i = self.module.weight[0].numel()  # inputs per output channel: one group's
        return k * n * o * i, n * n * (groups(self.module) * i + k * o) + n * o * i


class Recorder:
    """Forward hooks on a model's shared ``Linear`` / ``Conv2d`` / affine norm layers: their inputs and outputs.

    Records while gradients are enabled. :meth:`take` keeps the calls whose outputs the given
    losses depend on (a walk of their autograd graph, ~0.2 ms for a ResNet-18), so a forward by
    another user of the model (a loss-space step, a skipped step, an affinity probe) is dropped.
    """

    def __init__(self, model: nn.Module, shared: Iterable[nn.Parameter]) -> None:
        self.model = model
        shared_ids = {id(p) for p in shared}
        uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        self.layers: dict[nn.Module, Layer] = {}
        self.handles: list[RemovableHandle] = []
        for module in filter(_eligible, model.modules()):
            layer = Layer(module)
            if all(id(p) in shared_ids and p.requires_grad and uses[id(p)] == 1 for p in layer.params):
                self.layers[module] = layer
                # by weak reference: a deep copy of the model (JointModel.subset) shares no recorder
                # whose records nobody takes, and a dropped engine leaves inert hooks
                self.handles.append(module.register_forward_hook(functools.partial(_record, weakref.ref(self))))

    def _record(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        layer = self.layers.get(module)
        if layer is not None and torch.is_grad_enabled() and output.requires_grad:
            layer.inputs.append(args[0].detach())  # shares the version counter with args[0]
            layer.outputs.append(output)
            layer.versions.append(args[0]._version)
            layer.sources.append(args[0].grad_fn)
            layer.edges.append(_edge(output))

    def take(self, losses: Iterable[Tensor]) -> list[Layer]:
        """Per module, its calls that ``losses`` depend on, unless the losses also read its parameters
        outside those calls; the recorder starts afresh."""
        graph = graph_nodes(losses)
        readers = _readers(graph)
        out = []
        for module, layer in self.layers.items():
            live = Layer(module)
            calls = zip(layer.inputs, layer.outputs, layer.versions, layer.sources, layer.edges, strict=True)
            for x, y, v, s, e in calls:
                if e.node in graph:
                    live.inputs.append(x)
                    live.outputs.append(y)
                    live.versions.append(v)
                    live.sources.append(s)
                    live.edges.append(e)
            if live.outputs and not _read_elsewhere(live, readers):
                out.append(live)
            self.layers[module] = Layer(module)
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _edge(output: Tensor) -> GradientEdge:
    """Where the output's gradient is taken: its autograd edge now. A reshaped view of a whole tensor
    (``F.instance_norm`` returns one) takes its base's instead: an in-place op on the view later
    replaces the view's node in the graph, but keeps the base's (callers reshape the gradient)."""
    base = output._base
    if base is not None and base.numel() == output.numel() and base.is_contiguous() and output.is_contiguous():
        if base.storage_offset() == output.storage_offset():
            return get_gradient_edge(base)
    return get_gradient_edge(output)


def _record(recorder: weakref.ref[Recorder], module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
    live = recorder()
    if live is not None:
        live._record(module, args, output)


def graph_nodes(roots: Iterable[Tensor]) -> dict[object, None]:
    """The autograd nodes the roots' graph reaches, depth first (inputs in order): an ordered set."""
    seen: dict[object, None] = {}
    stack = [r.grad_fn for r in roots]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen[node] = None
        stack.extend(nxt for nxt, _ in reversed(node.next_functions))
    return seen


def _readers(graph: Iterable[object]) -> dict[int, list[object]]:
    """Per parameter (by id), the graph's nodes that read it (point to its gradient accumulator)."""
    readers: dict[int, list[object]] = {}
    for node in graph:
        for nxt, _ in node.next_functions:  # type: ignore[attr-defined]
            variable = getattr(nxt, "variable", None)
            if variable is not None:
                readers.setdefault(id(variable), []).append(node)
    return readers


def _read_elsewhere(layer: Layer, readers: dict[int, list[object]]) -> bool:
    """Whether a node outside the layer's calls (from each output down to its input) reads one of its
    parameters: the activations then miss that part of the weight gradient."""
    own: set[object] = set()
    stops = set(layer.sources)
    stack = [e.node for e in layer.edges]
    while stack:
        node = stack.pop()
        if node is None or node in own or node in stops:
            continue
        own.add(node)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return any(node not in own for p in layer.params for node in readers.get(id(p), []))


def plan(layers: list[Layer], k: int, max_positions: int = 4096, margin: float = 0.8) -> list[Layer]:
    """The layers whose Gramian is cheaper from activations (by ``margin``) and fits in memory."""
    chosen = []
    for layer in layers:
        if is_norm(layer.module):  # per-sample Gramians only (see NORMS)
            continue
        direct, activations = layer.cost(k)
        if layer.n_positions() <= max_positions and activations < margin * direct and layer.intact():
            chosen.append(layer)
    return chosen


@dataclass
class Prepared:
    """A planned layer after the task backwards: inputs as patches, each task's output gradients."""

    layer: Layer
    rows: Tensor  # P, N x I (float32)
    grads: list[Tensor]  # per task, D_k: N x O (float32; zeros for a task without a loss here)


def prepare(layer: Layer, grads: list[list[Tensor]], scale: Tensor | float) -> Prepared:
    """``grads[k][c]``: task k's (AMP-scaled) gradient w.r.t. the layer's c-th call output."""
    module = layer.module
    rows = torch.cat([patches(module, x.float()) for x in layer.inputs])
    per_task = [
        torch.cat([positions(module, g.float().view_as(y)) for g, y in zip(task, layer.outputs, strict=True)]) / scale
        for task in grads
    ]
    return Prepared(layer, rows, per_task)


def layer_gramian(prepared: Prepared) -> Tensor:
    """This layer's K x K share of ``J J^T`` (float64), float64 throughout if float32 overflows."""
    module = prepared.layer.module
    g = groups(module)
    for dtype in (torch.float32, torch.float64):
        rows = by_group(prepared.rows.to(dtype), g)
        d = torch.stack([by_group(d.to(dtype), g) for d in prepared.grads])  # K x g x N x O/g
        inner = rows @ rows.transpose(1, 2)  # A per group
        if module.bias is not None:
            inner += 1
        mixed = inner @ d  # A D_k for every task at once
        part = d.flatten(1) @ mixed.flatten(1).T  # <D_i, A D_j>
        if bool(torch.isfinite(part).all()):
            break
    return part.double()


def weighted_gradients(prepared: Prepared, coef: list[float]) -> list[Tensor]:
    """``sum_k coef_k G_k`` for the layer's weight (and bias), in one product."""
    module = prepared.layer.module
    combined = sum(c * g for c, g in zip(coef, prepared.grads, strict=True))
    out = [weight_product(module, combined, prepared.rows)]  # type: ignore[arg-type]
    if module.bias is not None:
        out.append(combined.sum(0))  # type: ignore[union-attr]
    return out


@dataclass
class SampleRows:
    """A layer's share of the per-sample Gramian, for per-sample losses of independent samples, kept
    as rows: few positions against the weight.

    Sample k's loss reaches only the rows (positions) of sample k, so the gradient of the summed
    losses w.r.t. those rows is sample k's own ``D_k`` there and zero elsewhere: the per-sample
    Gramian needs one backward, not K (the per-example gradient trick), and is
    ``G = (P P^T) * (D D^T)`` summed by sample.
    """

    layer: Layer
    rows: Tensor  # P, N x I (float32), call by call, each call's rows sample-major
    grads: Tensor  # D, N x O (float32)
    sample: Tensor  # the sample (objective) of each row

    def gramian(self, k: int, dtype: torch.dtype) -> Tensor:
        g = groups(self.layer.module)
        rows, d = by_group(self.rows.to(dtype), g), by_group(self.grads.to(dtype), g)
        inner = rows @ rows.transpose(1, 2)
        if self.layer.module.bias is not None:
            inner += 1
        m = (inner * (d @ d.transpose(1, 2))).sum(0)
        by_row = m.new_zeros(k, m.shape[0]).index_add_(0, self.sample, m)
        return m.new_zeros(k, k).index_add_(1, self.sample, by_row)

    def weighted(self, coef: Tensor) -> list[Tensor]:
        """``sum_k coef_k G_k`` for the weight (and bias): each row weighted by its sample's coefficient."""
        module = self.layer.module
        combined = self.grads * coef.to(self.grads)[self.sample][:, None]
        out = [weight_product(module, combined, self.rows)]
        if module.bias is not None:
            out.append(combined.sum(0).view_as(module.bias))
        return out


@dataclass
class SampleGradients:
    """The same share kept as the K per-sample gradients of the weight (K x W) and bias (K x O):
    many positions against the weight. Formed in the layer's own layout (a conv's through a grouped
    convolution backward, one group per sample and group: no unfolded patches); the activations
    are dropped."""

    layer: Layer
    weight: Tensor
    bias: Tensor | None

    def gramian(self, k: int, dtype: torch.dtype) -> Tensor:
        weight = self.weight.to(dtype)
        gram = weight @ weight.T
        if self.bias is not None:
            bias = self.bias.to(dtype)
            gram += bias @ bias.T
        return gram

    def weighted(self, coef: Tensor) -> list[Tensor]:
        """``sum_k coef_k G_k`` for the weight (and bias): a combination of the per-sample gradients."""
        module = self.layer.module
        out = [(coef.to(self.weight) @ self.weight).view_as(module.weight)]
        if self.bias is not None:
            out.append((coef.to(self.bias) @ self.bias).view_as(module.bias))
        return out


def _inner_cheaper(module: nn.Module, n: int, k: int, max_positions: int) -> bool:
    """Whether ``(P P^T) * (D D^T)`` (N^2 (I + O) multiply-adds, N^2 memory) beats forming the K
    per-sample weight gradients (N W + K^2 W for a weight of W entries, K W memory): few positions
    against the weight. Never for a norm: its K x C per-sample gradients are tiny."""
    if is_norm(module):
        return False
    o, w = module.weight.shape[0], module.weight.numel()
    i = module.weight[0].numel() * groups(module)
    return n <= max_positions and n * n * (i + o) <= n * w + k * k * w


def sample_rows(
    layer: Layer, grads: list[Tensor], k: int, scale: Tensor | float, max_positions: int = 4096
) -> SampleRows | SampleGradients:
    """The layer's share in the cheaper form. ``grads[c]``: the summed losses' gradient at the c-th
    call's output, whose first dimension holds the K samples."""
    module = layer.module
    ds = [g.float().view_as(y) / scale for g, y in zip(grads, layer.outputs, strict=True)]
    xs = [x.float() for x in layer.inputs]
    per = [y.numel() // (k * channels(module)) for y in layer.outputs]  # positions per sample
    if not _inner_cheaper(module, k * sum(per), k, max_positions):
        return SampleGradients(layer, *per_sample_gradients(module, xs, ds, k))
    rows = torch.cat([patches(module, x) for x in xs])
    d = torch.cat([positions(module, g) for g in ds])
    sample = torch.cat([torch.arange(k, device=rows.device).repeat_interleave(n) for n in per])
    return SampleRows(layer, rows, d, sample)


def per_sample_gradients(module: nn.Module, xs: list[Tensor], ds: list[Tensor], k: int) -> tuple[Tensor, Tensor | None]:
    """The K per-sample weight gradients (K x W, the weight's order) and bias gradients (K x O) of
    the calls with inputs ``xs`` and output gradients ``ds`` (samples along dim 0), summed over calls."""
    weight: Tensor = torch.zeros(())
    bias: Tensor = torch.zeros(())
    for x, d in zip(xs, ds, strict=True):
        if isinstance(module, nn.Conv2d):  # sample k's channels as groups of their own
            g = module.groups
            shape = (k * module.out_channels, module.in_channels // g, *module.kernel_size)
            flat = torch.nn.grad.conv2d_weight(
                x.reshape(1, -1, *x.shape[2:]), shape, d.reshape(1, -1, *d.shape[2:]),
                module.stride, module.padding, module.dilation, k * g,
            )  # fmt: skip
            weight = weight + flat.view(k, -1)
            bias = bias + d.flatten(2).sum(2)
        elif is_norm(module):  # sum D * x_hat over each sample's positions, channel by channel
            weight = weight + _sample_channel_sums(module, d * NORMS[type(module)](module, x), k)
            bias = bias + _sample_channel_sums(module, d, k)
        else:  # Linear: positions per sample along the middle dimensions
            rows, dk = x.reshape(k, -1, x.shape[-1]), d.reshape(k, -1, d.shape[-1])
            weight = weight + torch.bmm(dk.transpose(1, 2), rows).flatten(1)
            bias = bias + dk.sum(1)
    return weight, bias if module.bias is not None else None


def _sample_channel_sums(module: nn.Module, t: Tensor, k: int) -> Tensor:
    """``t`` (shaped as the layer's output) summed over each sample's positions: K x C."""
    if isinstance(module, nn.LayerNorm):  # channels are the trailing dimensions
        return t.reshape(k, -1, channels(module)).sum(1)
    return t.reshape(k, channels(module), -1).sum(2)


def sample_gramian(part: SampleRows | SampleGradients, k: int) -> Tensor:
    """The layer's K x K share (float64), float64 throughout if float32 overflows."""
    for dtype in (torch.float32, torch.float64):
        gram = part.gramian(k, dtype)
        if bool(torch.isfinite(gram).all()):
            break
    return gram.double()
