"""routing.ipynb: sparse routing. The top-k router and its mixture (= Hugging Face Mixtral),
token dispatch, and the Switch Transformer's top-1 router with capacity and its residual layer
(the auxiliary losses, expert parallelism and the counts are in ``routing_aux.py``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...reference import moe as ref
from .. import calls, register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, knob, randn

NO_HF = (Rule("transformers", "write it yourself instead of calling Hugging Face's MoE code"),)


# ---------------------------------------------------------------------------------------
# 08.top_k_router

def _route(logits, k, normalize=True, *, how="ref"):
    if how == "after":
        v, i = torch.topk(logits, k, dim=-1)
        return torch.softmax(v, -1), i
    if how == "no renorm":
        return ref.top_k_route(logits, k, normalize=False)
    if how == "axis":
        p = torch.softmax(logits, 0)
        w, i = torch.topk(p, k, dim=-1)
        return (w / w.sum(-1, keepdim=True) if normalize else w), i
    return ref.top_k_route(logits, k, normalize)


@register
class TopKRouter(Exercise):
    id = "08.top_k_router"
    entry = "top_k_route"
    title = "The top-k softmax router"
    forbid = NO_HF
    mistakes = (
        Mistake("softmax after top-k", "softmax over the k kept logits always sums to one: it "
                "is the renormalised convention. With normalize=False the weights are the "
                "probabilities of the softmax over ALL experts.", knob(_route, how="after")),
        Mistake("top-k weights not renormalised", "with normalize=True (Mixtral) divide the k "
                "kept probabilities by their sum.", knob(_route, how="no renorm")),
        Mistake("softmax over the wrong axis", "each token's router distribution is a softmax "
                "over its E experts (the last axis).", knob(_route, how="axis")),
    )

    def reference(self, logits, k, normalize=True):
        return ref.top_k_route(logits, k, normalize)

    call = calls.as_tuple  # torch.topk's named tuple is a fine answer too

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, N, E, k, normalize, dtype=F32):
            return Case(label, (randn(g, N, E, dtype=dtype, scale=2.0), k), dict(normalize=normalize))

        cases = [case("8 tokens, 4 experts, top-2, renormalised", 8, 4, 2, True),
                 case("8 tokens, 4 experts, top-2, raw probabilities", 8, 4, 2, False)]
        if hidden:
            cases += [case("top-1 (Switch), raw", 6, 5, 1, False, F64),
                      case("top-3 of 8, renormalised, float64", 10, 8, 3, True, F64),
                      case("k = E", 4, 3, 3, True),
                      case("one token", 1, 6, 2, False)]
        return cases


# ---------------------------------------------------------------------------------------
# 08.moe_forward

def _moe(x, router_weight, gate_up, down, k, *, how="ref"):
    E = router_weight.shape[0]
    if how == "one":
        k = 1
    w, idx = ref.top_k_route(x @ router_weight.T, k, normalize=how != "no renorm")
    if how == "one":
        w = torch.ones_like(w)
    if how == "unweighted":
        w = torch.ones_like(w)
    out = torch.zeros_like(x)
    for e in range(E):
        tok, slot = torch.where(idx == e)
        if len(tok):
            gu = gate_up[e]
            if how == "swapped":
                gu = torch.cat([gu.chunk(2)[1], gu.chunk(2)[0]])
            out = out.index_add(0, tok, ref.swiglu_expert(x[tok], gu, down[e]) * w[tok, slot, None])
    return out


@register
class MoEForward(Exercise):
    id = "08.moe_forward"
    entry = "moe_forward"
    uses = ("08.top_k_router",)
    title = "The top-k mixture of SwiGLU experts (Mixtral's sparse block)"
    forbid = NO_HF
    mistakes = (
        Mistake("top-k weights not renormalised", "Mixtral divides the k kept router "
                "probabilities by their sum before weighing the experts.",
                knob(_moe, how="no renorm")),
        Mistake("expert outputs not weighted", "each chosen expert's output is multiplied by its "
                "routing weight; a plain sum doubles the output of a top-2 layer.",
                knob(_moe, how="unweighted")),
        Mistake("gate and up swapped", "gate_up holds the gate rows FIRST: silu(first half) * "
                "second half.", knob(_moe, how="swapped")),
        Mistake("only the top expert", "use the k experts with the largest probabilities, "
                "not just the first.", knob(_moe, how="one")),
    )

    def reference(self, x, router_weight, gate_up, down, k):
        return ref.moe_forward(x, router_weight, gate_up, down, k)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, N, C, I, E, k, dtype=F32):
            return Case(label, (randn(g, N, C, dtype=dtype), randn(g, E, C, dtype=dtype),
                                randn(g, E, 2 * I, C, dtype=dtype, scale=C ** -0.5),
                                randn(g, E, C, I, dtype=dtype, scale=I ** -0.5), k))

        cases = [case("10 tokens, 4 experts, top-2", 10, 8, 6, 4, 2)]
        if hidden:
            cases += [case("top-1 of 3, float64", 7, 4, 5, 3, 1, F64),
                      case("top-3 of 8", 16, 6, 4, 8, 3),
                      case("one token", 1, 8, 6, 4, 2, F64)]
        return cases


# ---------------------------------------------------------------------------------------
# 08.dispatch

def _dispatch(indices, n_experts, *, how="ref"):
    if how == "slot-major":
        flat = indices.T.reshape(-1)
        order = torch.argsort(flat, stable=True)
        n = indices.shape[0]
        return order % n, order // n, torch.bincount(flat, minlength=n_experts)
    if how == "no minlength":
        token, slot, _ = ref.dispatch(indices, n_experts)
        return token, slot, torch.bincount(indices.reshape(-1))
    if how == "per token":
        token, slot, counts = ref.dispatch(indices, n_experts)
        return token, slot, torch.tensor([int((indices == e).any(-1).sum()) for e in range(n_experts)])
    return ref.dispatch(indices, n_experts)


@register
class Dispatch(Exercise):
    id = "08.dispatch"
    entry = "dispatch"
    title = "Token dispatch: sort the assignments by expert"
    forbid = NO_HF
    mistakes = (
        Mistake("slot-major order", "flatten the (N, k) indices row by row (token 0's choices, "
                "then token 1's, ...) before the stable sort: within an expert, assignments "
                "stay in token order.", knob(_dispatch, how="slot-major")),
        Mistake("counts without minlength", "an expert that gets no token still has a count "
                "(0): torch.bincount(..., minlength=n_experts).", knob(_dispatch, how="no minlength")),
    )

    def reference(self, indices, n_experts):
        return ref.dispatch(indices, n_experts)

    def cases(self, seed, hidden):
        g = generator(seed)

        def distinct(N, E, k):
            return torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(N)])

        cases = [Case("5 tokens, top-2 of 4", (distinct(5, 4, 2), 4)),
                 Case("the last expert unused", (torch.tensor([[1, 0], [0, 2], [2, 1]]), 4))]
        if hidden:
            cases += [Case("top-1 of 6, 12 tokens", (distinct(12, 6, 1), 6)),
                      Case("top-3 of 5, 7 tokens", (distinct(7, 5, 3), 5)),
                      Case("everything to expert 2", (torch.full((4, 1), 2), 3))]
        return cases


# ---------------------------------------------------------------------------------------
# 08.switch_route

def _switch(logits, capacity_factor, *, how="ref"):
    G, T, E = logits.shape
    probs = torch.softmax(logits, -1)
    gate, index = probs.max(-1)
    onehot = F.one_hot(index, E)
    if how == "shared queue":
        priority = onehot.reshape(G * T, E).cumsum(0).reshape(G, T, E)
    else:
        priority = onehot.cumsum(-2)
    cap = {"per batch": math.ceil(capacity_factor * T),
           "floor": int(math.floor(capacity_factor * T / E))}.get(how, ref.expert_capacity(T, E, capacity_factor))
    mask = onehot * (priority <= cap)
    if how == "gate zeroed":
        gate = gate * mask.sum(-1)
    return mask, gate


@register
class SwitchRoute(Exercise):
    id = "08.switch_route"
    entry = "switch_route"
    title = "Switch top-1 routing with expert capacity"
    forbid = NO_HF
    mistakes = (
        Mistake("capacity computed per batch instead of per expert", "capacity is a number of "
                "slots PER EXPERT: ceil(capacity_factor * T / E), the tokens' fair share times "
                "the factor.", knob(_switch, how="per batch")),
        Mistake("one queue for all sequences", "each sequence (group) has its own capacity: "
                "count a token's place in its expert's queue within its own sequence (cumsum "
                "over T, not over the flattened batch).", knob(_switch, how="shared queue")),
        Mistake("capacity rounded down", "round the capacity UP: ceil(capacity_factor * T / E).",
                knob(_switch, how="floor")),
        Mistake("gate zeroed for dropped tokens", "the gate is the probability of the chosen "
                "expert for every token; the dispatch mask alone says who was dropped.",
                knob(_switch, how="gate zeroed")),
    )

    def reference(self, logits, capacity_factor):
        return ref.switch_route(logits, capacity_factor)

    def cases(self, seed, hidden):
        g = generator(seed)

        def skewed(G, T, E, dtype=F32):
            bias = torch.zeros(E, dtype=F64)
            bias[0] = 1.5  # expert 0 is popular: some tokens overflow
            return (randn(g, G, T, E, dtype=F64) + bias).to(dtype)

        cases = [Case("2 sequences of 10 tokens, 4 experts, factor 1.25", (skewed(2, 10, 4), 1.25)),
                 Case("factor 1.0, 3 experts", (skewed(3, 6, 3), 1.0))]
        if hidden:
            cases += [Case("factor 2: nothing dropped", (skewed(2, 8, 4), 2.0)),
                      Case("factor 0.5, float64", (skewed(2, 12, 3, F64), 0.5)),
                      Case("one sequence, 8 experts", (skewed(1, 16, 8), 1.5)),
                      Case("3 sequences, factor 1.1", (skewed(3, 10, 2), 1.1))]
        return cases


# ---------------------------------------------------------------------------------------
# 08.switch_layer

def _switch_layer(x, router_weight, w_in, w_out, capacity_factor, *, how="ref"):
    mask, gate = ref.switch_route(x @ router_weight.T, capacity_factor)
    out = torch.zeros_like(x)
    for e in range(router_weight.shape[0]):
        sel = mask[..., e].bool()
        if sel.any():
            h = torch.relu(x[sel] @ w_in[e].T) @ w_out[e].T
            out[sel] = h if how == "no gate" else h * gate[sel][:, None]
    if how == "zeroed":
        kept = mask.sum(-1, keepdim=True).to(x.dtype)
        return (x + out) * kept
    if how == "no residual":
        return out
    return x + out


@register
class SwitchLayer(Exercise):
    id = "08.switch_layer"
    entry = "switch_layer"
    uses = ("08.switch_route",)
    title = "The Switch FFN sub-layer: dropped tokens ride the residual"
    forbid = NO_HF
    mistakes = (
        Mistake("dropped tokens zeroed instead of passed through", "a token over capacity gets "
                "no expert, so the sub-layer adds 0 and the residual carries x through "
                "unchanged: its output is x, not 0.", knob(_switch_layer, how="zeroed")),
        Mistake("gate not applied", "scale the expert's output by the router probability of "
                "the chosen expert (that is how the router gets a gradient).",
                knob(_switch_layer, how="no gate")),
        Mistake("no residual", "return x + the layer's output.", knob(_switch_layer, how="no residual")),
    )

    def reference(self, x, router_weight, w_in, w_out, capacity_factor):
        return ref.switch_layer(x, router_weight, w_in, w_out, capacity_factor)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, G, T, C, H, E, cf, dtype=F32):
            rw = randn(g, E, C, dtype=dtype)
            rw[0] += 0.5  # expert 0 popular
            return Case(label, (randn(g, G, T, C, dtype=dtype), rw,
                                randn(g, E, H, C, dtype=dtype, scale=C ** -0.5),
                                randn(g, E, C, H, dtype=dtype, scale=H ** -0.5), cf))

        cases = [case("2 x 8 tokens, 4 experts, factor 1.0", 2, 8, 6, 10, 4, 1.0)]
        if hidden:
            cases += [case("factor 0.5, float64", 2, 10, 4, 8, 2, 0.5, F64),
                      case("factor 1.5, 3 experts", 3, 6, 5, 7, 3, 1.5)]
        return cases
