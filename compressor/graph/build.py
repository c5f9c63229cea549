"""Building a channel graph, counting FLOPs and parameters, calibrating BatchNorm statistics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from compressor.errors import TraceError, UsageError
from compressor.graph.channel_graph import ChannelGraph
from compressor.graph.cost import Cost
from compressor.graph.groups import collapsed_whole_group_convs
from compressor.graph.handlers import GROUPED_MODES
from compressor.graph.labels import LabelState
from compressor.graph.propagate import Propagation, model_error
from compressor.graph.registry import handler_for
from compressor.graph.timm_handlers import load_for
from compressor.graph.trace import trace


def _example(
    model: nn.Module, example_input: torch.Tensor | None, input_shape: Sequence[int] | None
) -> torch.Tensor:
    if example_input is not None:
        return example_input
    if input_shape is None:
        raise UsageError("build_graph needs an example input or an input shape such as (1, 3, 224, 224)")
    p = next(model.parameters(), None)
    device = p.device if p is not None and p.device.type != "meta" else torch.device("cpu")
    return torch.randn(tuple(int(s) for s in input_shape), device=device)


@torch.no_grad()
def build_graph(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    leaf_modules: Iterable[type[nn.Module]] = (),
    grouped: str = "auto",
    _override: dict[str, str] | None = None,
) -> ChannelGraph:
    """Trace ``model`` and find its coupled channel groups (see :class:`ChannelGraph`).

    ``grouped``: how grouped convolutions are cut: ``"auto"`` (per conv, see
    :func:`compressor.graph.handlers.grouped_structure`), ``"whole"`` groups or ``"within"``
    groups (every group keeps the same channel positions). With ``"auto"``, a conv whose whole
    groups collapsed into fewer than two prunable classes is cut within groups instead and the
    graph is built again (``_override``: those convs so far).
    """
    if grouped not in GROUPED_MODES:
        raise UsageError(
            f"grouped={grouped!r} is not a grouped-conv structure; use one of {', '.join(GROUPED_MODES)}"
        )
    x = _example(model, example_input, input_shape)
    x = x[:1]
    load_for(model)  # timm's blocks, when the model has any
    leaf_modules = tuple(leaf_modules)
    was = model.training
    model.eval()
    try:
        gm = trace(model, leaf_modules, example=(x,))
        st = LabelState()
        st.grouped, st.grouped_override = grouped, dict(_override or {})
        p = Propagation(gm, st, count_flops=True)
        p.run(x)
        # modules used only in training (auxiliary heads) are absent from the eval graph:
        # trace the training graph too so their input channels are known.
        used = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
        dead = [
            n
            for n, m in model.named_modules()
            if handler_for(m) is not None
            and next(m.parameters(recurse=False), None) is not None
            and n not in used
            and not any(n.startswith(u + ".") for u in used)
        ]
        if dead:
            model.train()
            try:
                gm_train = trace(model, leaf_modules, example=(x,))
            finally:
                model.eval()
            if any(n.op == "call_module" and str(n.target) in dead for n in gm_train.graph.nodes):
                # what the eval pass counted (MACs, a handler's own per-call counts in ``extra``)
                counted = {name: (rec.macs, dict(rec.extra)) for name, rec in st.records.items()}
                xt = x
                for attempt in range(3):  # auxiliary heads may need a larger input than the eval graph
                    try:
                        Propagation(gm_train, st, tag=f"train{attempt}:").run(xt)
                        break
                    except (TraceError, UsageError):
                        if attempt == 2:
                            raise
                        xt = torch.randn(*xt.shape[:2], *(2 * s for s in xt.shape[2:]), device=xt.device)
                for name, rec in st.records.items():  # the cost model counts the eval graph only
                    rec.macs, rec.extra = counted.get(name, (0, rec.extra))
    finally:
        model.train(was)
    graph = ChannelGraph(model, gm, st, tuple(x.shape), unhandled_macs=int(p.flops // 2))
    if grouped == "auto":  # ends: every round moves at least one more conv to within groups
        redo = [n for n in collapsed_whole_group_convs(st, graph.partition) if n not in st.grouped_override]
        if redo:
            override = {**st.grouped_override, **dict.fromkeys(redo, "within")}
            return build_graph(model, x, leaf_modules=leaf_modules, grouped=grouped, _override=override)
    return graph


def count(model: nn.Module, input_shape: Sequence[int]) -> Cost:
    """Ground-truth MACs (``torch.utils.flop_counter``: FLOPs / 2) and parameters, per module.

    A model on the ``meta`` device is counted without computing anything.
    """
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    x = torch.zeros(tuple(int(s) for s in input_shape), device=device)
    was = model.training
    model.eval()
    # no parameter requires grad while counting: the counter's module tracker hooks the autograd
    # graph of every module input that does, which fails for a parameter passed as an input
    # (PiT hands its class token to its transformer stages as is)
    grads = [(q, q.requires_grad) for q in model.parameters()]
    for q, _ in grads:
        q.requires_grad_(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
    except (TraceError, UsageError):
        raise
    except Exception as e:
        raise model_error(e, tuple(int(s) for s in input_shape)) from e
    finally:
        model.train(was)
        for q, g in grads:
            q.requires_grad_(g)
    per = fc.get_flop_counts()
    root = type(model).__name__
    rows = []
    for name, m in model.named_modules():
        if name == "" or any(True for _ in m.children()):
            continue
        key = f"{root}.{name}"
        macs = sum(per.get(key, {}).values()) // 2
        params = sum(p.numel() for p in m.parameters(recurse=False))
        if macs or params:
            rows.append({"module": name, "type": type(m).__name__, "macs": int(macs), "params": int(params)})
    return Cost(int(fc.get_total_flops() // 2), int(sum(p.numel() for p in model.parameters())), rows)


@torch.no_grad()
def calibrate_bn(
    model: nn.Module, input_shape: Sequence[int], *, batches: int = 4, seed: int = 0
) -> nn.Module:
    """Give an untrained model's BatchNorm layers statistics from random inputs (in place).

    Untrained deep nets (EfficientNet at init) have vanishing activations in eval mode, which
    makes numerical checks vacuous; tests and benchmarks calibrate first.
    """
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    was = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in bns:
        m.train()
    for _ in range(batches):
        model(torch.randn((max(2, int(input_shape[0])), *input_shape[1:]), generator=gen))
    for m, (mom, tr) in zip(bns, saved):
        m.momentum = mom
        m.train(tr)
    model.train(was)
    return model
