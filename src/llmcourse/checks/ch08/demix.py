"""demix.ipynb: the DEMix layer (Gururangan et al., 2021): the domain posterior in log space,
the cached prior's update, the posterior-weighted mixture, domain-routed training, and adding
or removing a domain's expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...reference import demix as ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, knob, randn

NO_HF = (Rule("transformers", "write it yourself instead of calling Hugging Face's code"),)


def _logprobs(g, D, B, T, dtype=F64, scale=3.0):
    return (-torch.rand(D, B, T, generator=g, dtype=F64) * scale).to(dtype)


def _prior(g, D, dtype=F64):
    p = torch.rand(D, generator=g, dtype=F64) + 0.2
    return (p / p.sum()).to(dtype)


# ---------------------------------------------------------------------------------------
# 08.domain_posterior

def _post(token_log_probs, log_prior, *, space="log", inclusive=False, prior=True, axis=0):
    seen = token_log_probs.cumsum(-1) - (0 if inclusive else token_log_probs)
    lp = log_prior if prior else torch.zeros_like(log_prior)
    joint = seen + lp[:, None, None]
    if space == "prob":
        lik = joint.exp()
        return (lik / lik.sum(0, keepdim=True)).permute(1, 2, 0)
    if axis == 0:
        return torch.softmax(joint, 0).permute(1, 2, 0)
    return torch.softmax(joint, -1).permute(1, 2, 0)


@register
class DomainPosterior(Exercise):
    id = "08.domain_posterior"
    entry = "domain_posterior"
    title = "The domain posterior p(d | x_<t), in log space"
    forbid = NO_HF
    mistakes = (
        Mistake("posterior in probability space", "a product of hundreds of probabilities "
                "underflows to 0 (even in float64, below about 1e-308), and 0 / 0 is nan: add "
                "log-likelihoods and normalise with a log-sum-exp (a softmax over domains).",
                knob(_post, space="prob")),
        Mistake("token t counted in its own posterior", "the posterior that weighs the experts "
                "for predicting x_t may only use x_<t: an exclusive cumulative sum (position 0 "
                "gets the prior).", knob(_post, inclusive=True)),
        Mistake("prior ignored", "p(d | x_<t) is proportional to p(x_<t | d) p(d): add log_prior "
                "to every domain's log-likelihood.", knob(_post, prior=False)),
        Mistake("normalised over positions", "the posterior is a distribution over DOMAINS: "
                "normalise over d, at every (b, t).", knob(_post, axis=-1)),
    )

    def reference(self, token_log_probs, log_prior):
        return ref.domain_posterior(token_log_probs, log_prior)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, D, B, T, dtype=F64, scale=3.0):
            return Case(label, (_logprobs(g, D, B, T, dtype, scale), _prior(g, D, dtype).log()))

        cases = [case("3 domains, 2 sequences of 6 tokens", 3, 2, 6),
                 case("a long prefix: 800 tokens", 3, 1, 800)]
        if hidden:
            cases += [case("4 domains, float32", 4, 3, 9, F32),
                      case("one token", 2, 2, 1),
                      case("one domain", 1, 2, 5),
                      case("1500 tokens, confident experts", 2, 2, 1500, scale=8.0)]
        return cases


# ---------------------------------------------------------------------------------------
# 08.update_prior

def _prior_upd(prior, posterior, decay, *, how="ema"):
    if how == "frozen":
        return prior
    if how == "swapped":
        return (1 - decay) * prior + decay * posterior.mean(0)
    if how == "sum":
        return decay * prior + (1 - decay) * posterior.sum(0)
    if how == "last":
        return decay * prior + (1 - decay) * posterior[-1]
    return ref.update_prior(prior, posterior, decay)


@register
class UpdatePrior(Exercise):
    id = "08.update_prior"
    entry = "update_prior"
    title = "The cached prior as an exponential moving average"
    forbid = NO_HF
    mistakes = (
        Mistake("prior not updated", "the cached prior moves towards the posteriors of the "
                "held-out sequences: decay * prior + (1 - decay) * mean posterior.",
                knob(_prior_upd, how="frozen")),
        Mistake("decay weighs the new evidence", "decay is the weight of the OLD prior; the "
                "batch's mean posterior gets 1 - decay.", knob(_prior_upd, how="swapped")),
        Mistake("posteriors summed, not averaged", "average the N posteriors (their mean sums "
                "to one, so the new prior does too).", knob(_prior_upd, how="sum")),
        Mistake("only the last sequence", "use the mean over all N sequences of the batch.",
                knob(_prior_upd, how="last")),
    )

    def reference(self, prior, posterior, decay):
        return ref.update_prior(prior, posterior, decay)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, D, N, decay, dtype=F64):
            post = torch.softmax(randn(g, N, D, scale=2.0), -1).to(dtype)
            return Case(label, (_prior(g, D, dtype), post, decay))

        cases = [case("3 domains, 4 sequences, decay 0.3", 3, 4, 0.3),
                 case("5 domains, 2 sequences, decay 0.9", 5, 2, 0.9)]
        if hidden:
            cases += [case("decay 0: the batch alone", 4, 3, 0.0),
                      case("float32, 8 sequences", 3, 8, 0.5, F32),
                      case("2 domains, 6 sequences, decay 0.7", 2, 6, 0.7)]
        return cases


# ---------------------------------------------------------------------------------------
# 08.mixture

def _mix(expert_logits, posterior, *, how="mix"):
    logp = F.log_softmax(expert_logits, -1)
    w = posterior.permute(2, 0, 1)[..., None]
    if how == "argmax":
        best = posterior.argmax(-1)  # (B, T)
        return logp.gather(0, best[None, ..., None].expand(1, *logp.shape[1:]))[0]
    if how == "logits":
        return F.log_softmax((w * expert_logits).sum(0), -1)
    if how == "logprobs":
        return (w * logp).sum(0)
    if how == "uniform":
        return torch.logsumexp(logp, 0) - torch.log(torch.tensor(float(logp.shape[0]), dtype=logp.dtype))
    if how == "prob":
        return (w * logp.exp()).sum(0).log()
    return ref.mixture_log_probs(expert_logits, posterior)


@register
class Mixture(Exercise):
    id = "08.mixture"
    entry = "mixture_log_probs"
    title = "The posterior-weighted mixture of the experts"
    forbid = NO_HF
    mistakes = (
        Mistake("expert chosen by argmax of the posterior", "DEMix MIXES the experts: "
                "p(x_t | x_<t) = sum_d p(d | x_<t) p_d(x_t | x_<t); picking the most probable "
                "domain throws away the others' mass exactly where the domain is uncertain.",
                knob(_mix, how="argmax")),
        Mistake("logits mixed, not probabilities", "mix the experts' probability distributions "
                "(softmax of each expert's logits), not their logits.", knob(_mix, how="logits")),
        Mistake("log-probabilities mixed", "a weighted sum of log-probabilities is a geometric "
                "mixture and does not sum to one; mix probabilities, then take the log (by "
                "logsumexp of log p_d + log p(d | x_<t)).", knob(_mix, how="logprobs")),
        Mistake("posterior ignored", "weigh each expert by its posterior p(d | x_<t), not "
                "1 / D.", knob(_mix, how="uniform")),
        Mistake("mixture in probability space", "exp of a very negative log-probability is 0, "
                "and log 0 = -inf: stay in log space, logsumexp over d of "
                "log_softmax(logits_d) + log p(d | x_<t).", knob(_mix, how="prob")),
    )

    def reference(self, expert_logits, posterior):
        return ref.mixture_log_probs(expert_logits, posterior)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, D, B, T, V, dtype=F64, scale=2.0, sharp=1.0):
            post = torch.softmax(randn(g, B, T, D, scale=sharp), -1).to(dtype)
            return Case(label, (randn(g, D, B, T, V, dtype=dtype, scale=scale), post))

        cases = [case("3 experts, 2 x 4 positions, 6 symbols", 3, 2, 4, 6),
                 case("very confident experts (logits x 400)", 2, 1, 3, 5, scale=400.0)]
        if hidden:
            cases += [Case("float32, 4 experts",
                           (randn(g, 4, 2, 3, 7, dtype=F32, scale=2.0),
                            torch.softmax(randn(g, 2, 3, 4), -1)), rtol=1e-5, atol=1e-5),
                      case("one expert", 1, 2, 2, 5),
                      case("a sharp posterior", 3, 3, 5, 4, sharp=6.0),
                      case("many symbols", 2, 1, 2, 50)]
        return cases


# ---------------------------------------------------------------------------------------
# 08.routed_ffn

def _routed(x, domains, w_fc, b_fc, w_proj, b_proj, *, how="route"):
    if how == "first":
        return ref.gelu_mlp(x, w_fc[0], b_fc[0], w_proj[0], b_proj[0])
    if how == "mean":
        return sum(ref.gelu_mlp(x, w_fc[d], b_fc[d], w_proj[d], b_proj[d])
                   for d in range(len(w_fc))) / len(w_fc)
    if how == "erf":
        out = torch.zeros_like(x)
        for b, d in enumerate(domains.tolist()):
            out[b] = F.gelu(x[b] @ w_fc[d].T + b_fc[d]) @ w_proj[d].T + b_proj[d]
        return out
    return ref.domain_routed_ffn(x, domains, w_fc, b_fc, w_proj, b_proj)


@register
class RoutedFFN(Exercise):
    id = "08.routed_ffn"
    entry = "domain_routed_ffn"
    title = "Domain-routed training: each sequence through its domain's expert"
    forbid = NO_HF
    mistakes = (
        Mistake("every sequence through expert 0", "sequence b belongs to domain domains[b] "
                "and goes through THAT expert.", knob(_routed, how="first")),
        Mistake("all experts averaged", "at training time DEMix routes deterministically: one "
                "expert per sequence, no mixing.", knob(_routed, how="mean")),
        Mistake("exact (erf) GELU", "GPT-2's MLP uses the tanh approximation of GELU: "
                "F.gelu(..., approximate='tanh').", knob(_routed, how="erf")),
    )

    def reference(self, x, domains, w_fc, b_fc, w_proj, b_proj):
        return ref.domain_routed_ffn(x, domains, w_fc, b_fc, w_proj, b_proj)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, B, T, C, H, D, domains, dtype=F64):
            return Case(label, (randn(g, B, T, C, dtype=dtype), torch.tensor(domains),
                                randn(g, D, H, C, dtype=dtype, scale=C ** -0.5),
                                randn(g, D, H, dtype=dtype, scale=0.1),
                                randn(g, D, C, H, dtype=dtype, scale=H ** -0.5),
                                randn(g, D, C, dtype=dtype, scale=0.1)))

        cases = [case("4 sequences, 3 domains", 4, 5, 6, 12, 3, [2, 0, 1, 2])]
        if hidden:
            cases += [case("float32, 2 domains", 3, 4, 8, 16, 2, [1, 1, 0], F32),
                      case("one domain unused", 2, 3, 4, 8, 3, [2, 2]),
                      case("one sequence", 1, 7, 4, 8, 4, [3])]
        return cases


# ---------------------------------------------------------------------------------------
# 08.add_expert and 08.remove_expert

def _add(expert_weights, posterior, *, how="argmax"):
    if how == "first":
        return [torch.cat([w, w[:1].clone()]) for w in expert_weights]
    if how == "front":
        src = int(posterior.argmax())
        return [torch.cat([w[src:src + 1].clone(), w]) for w in expert_weights]
    if how == "argmin":
        src = int(posterior.argmin())
        return [torch.cat([w, w[src:src + 1].clone()]) for w in expert_weights]
    if how == "mean":
        return [torch.cat([w, w.mean(0, keepdim=True)]) for w in expert_weights]
    return ref.add_expert(expert_weights, posterior)


def _expert_tensors(g, D, C=3, H=5, dtype=F64):
    return [randn(g, D, H, C, dtype=dtype), randn(g, D, H, dtype=dtype),
            randn(g, D, C, H, dtype=dtype), randn(g, D, C, dtype=dtype)]


@register
class AddExpert(Exercise):
    id = "08.add_expert"
    entry = "add_expert"
    title = "A new domain's expert, the others untouched"
    forbid = NO_HF
    mistakes = (
        Mistake("new expert copied from expert 0", "initialise the new expert from the expert "
                "whose domain the new data finds MOST probable: argmax of the posterior.",
                knob(_add, how="first")),
        Mistake("new expert put first", "the old experts keep their places 0..D-1 (their "
                "domains' indices must not move); append the new one at index D.",
                knob(_add, how="front")),
        Mistake("copied from the least probable expert", "argmax, not argmin, of the posterior.",
                knob(_add, how="argmin")),
        Mistake("average of the experts", "DEMix copies the single most probable expert.",
                knob(_add, how="mean")),
    )

    def reference(self, expert_weights, posterior):
        return ref.add_expert(expert_weights, posterior)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, D, dtype=F64, best=None):
            post = torch.softmax(randn(g, D, scale=2.0), -1).to(dtype)
            if best is not None:
                post = torch.roll(torch.sort(post).values, best + 1)  # the largest at `best`
            return Case(label, (_expert_tensors(g, D, dtype=dtype), post))

        cases = [case("3 experts, the second most probable", 3, best=1)]
        if hidden:
            cases += [case("4 experts, float32", 4, F32, best=2),
                      case("2 experts, the last most probable", 2, best=1),
                      case("5 experts", 5, best=3)]
        return cases


def _remove(expert_weights, prior, d, *, how="renorm"):
    keep = [i for i in range(len(prior)) if i != d]
    if how == "no renorm":
        return [w[keep] for w in expert_weights], prior[keep]
    if how == "prior kept":
        return [w[keep] for w in expert_weights], prior
    return ref.remove_expert(expert_weights, prior, d)


@register
class RemoveExpert(Exercise):
    id = "08.remove_expert"
    entry = "remove_expert"
    title = "Removing a domain: its expert and its prior"
    forbid = NO_HF
    mistakes = (
        Mistake("prior not renormalised", "after dropping p(d) the remaining prior sums to "
                "1 - p(d): divide by that sum.", knob(_remove, how="no renorm")),
        Mistake("prior kept whole", "remove domain d's entry from the prior too (D - 1 "
                "entries).", knob(_remove, how="prior kept")),
    )

    def reference(self, expert_weights, prior, d):
        return ref.remove_expert(expert_weights, prior, d)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [Case("remove the second of 3", (_expert_tensors(g, 3), _prior(g, 3), 1))]
        if hidden:
            cases += [Case("remove the last of 4", (_expert_tensors(g, 4), _prior(g, 4), 3)),
                      Case("remove the first, float32", (_expert_tensors(g, 3, dtype=F32),
                                                         _prior(g, 3, F32), 0))]
        return cases
