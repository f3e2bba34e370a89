"""decoding.ipynb: sampling distributions (temperature, top-k, top-p), beam search, distinct-n,
and hallucination measured on the language's math domain.

The learner's functions may return plain Python numbers or lists where the task allows it;
``call`` turns them into the reference's types so that the grader compares arrays.
"""

from __future__ import annotations

import random

import torch

from ...data.synthetic import Language, document_log_prob, documents
from ...reference import decoding as ref
from .. import calls, register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, knob, randn

NO_HF_GENERATION = (
    Rule("transformers", "write the decoding step yourself instead of calling Hugging Face's "
         "generation utilities"),
)


# ---------------------------------------------------------------------------------------
# 10.next_token_probs

def _probs(logits, temperature=1.0, top_k=0, top_p=1.0, *, temp="divide", crossing="keep",
           order="temperature first", sort=True, renormalise=True, ties=True):
    z = logits if temp == "ignore" else (logits * temperature if temp == "multiply" else logits / temperature)
    keep = torch.ones_like(z, dtype=torch.bool)
    if top_k > 0:
        k = min(top_k, z.shape[-1])
        if ties:
            keep &= z >= torch.topk(z, k, dim=-1).values[..., -1:]
        else:
            keep &= torch.zeros_like(keep).scatter(-1, torch.topk(z, k, dim=-1).indices, True)
    if top_p < 1.0:
        base = logits if order == "temperature after top-p" else z
        p = torch.softmax(base.masked_fill(~keep, float("-inf")), dim=-1)
        if sort:
            q, idx = torch.sort(p, dim=-1, descending=True)
        else:
            q, idx = p, torch.arange(p.shape[-1]).expand_as(p)
        cum = q.cumsum(-1)
        kept = (cum - q < top_p) if crossing == "keep" else (cum <= top_p)
        kept[..., 0] = True
        keep &= torch.zeros_like(keep).scatter(-1, idx, kept)
    if renormalise:
        return torch.softmax(z.masked_fill(~keep, float("-inf")), dim=-1)
    return torch.softmax(z, dim=-1) * keep


@register
class NextTokenProbs(Exercise):
    """Temperature, then top-k, then top-p, then softmax (Hugging Face's warper order)."""
    id = "10.next_token_probs"
    entry = "next_token_probs"
    forbid = NO_HF_GENERATION
    mistakes = (
        Mistake("temperature applied after the softmax", "dividing probabilities by T and "
                "renormalising changes nothing: the temperature divides the LOGITS, z / T, before "
                "the softmax.", knob(_probs, temp="ignore")),
        Mistake("logits multiplied by T", "a temperature T > 1 must FLATTEN the distribution: "
                "divide the logits by T.", knob(_probs, temp="multiply")),
        Mistake("top-p drops the token that crosses p", "the nucleus is the SMALLEST set whose "
                "mass reaches p, so the token whose cumulative probability crosses p is KEPT "
                "(Hugging Face's convention): keep a token when the mass strictly before it is "
                "< p.", knob(_probs, crossing="drop")),
        Mistake("top-p on the untempered distribution", "apply the temperature first, then "
                "top-k, then top-p on the tempered probabilities (the order of Hugging Face's "
                "warpers).", knob(_probs, order="temperature after top-p")),
        Mistake("top-p without sorting", "the cumulative sum runs over the tokens sorted by "
                "probability, most probable first, not in vocabulary order.", knob(_probs, sort=False)),
        Mistake("removed tokens' mass not renormalised", "after removing tokens, renormalise: "
                "set their logits to -inf and take the softmax (rows sum to 1).",
                knob(_probs, renormalise=False)),
        Mistake("top-k breaks ties at the k-th value", "keep every token whose logit is >= the "
                "k-th largest (torch.topk(...).values[..., -1:]): tokens tied with the k-th stay.",
                knob(_probs, ties=False)),
    )

    def reference(self, logits, temperature=1.0, top_k=0, top_p=1.0):
        return ref.next_token_probs(logits, temperature, top_k, top_p)

    def cases(self, seed, hidden):
        g = generator(seed)
        # probabilities 0.5, 0.3, 0.15, 0.05: with p = 0.7 the token at 0.3 crosses p
        nucleus = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3], [0.3, 0.05, 0.15, 0.5]]))
        tie = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0], [1.0, 1.0, 1.0, 0.0, 2.0]])
        cases = [
            Case("temperature 2 only", (randn(g, 3, 10, scale=2.0),), {"temperature": 2.0}),
            Case("top-k = 3 only", (randn(g, 2, 12, scale=2.0),), {"top_k": 3}),
            Case("top-p = 0.7: the token at 0.3 crosses p", (nucleus,), {"top_p": 0.7}),
            Case("temperature 0.5 + top-p 0.8", (randn(g, 4, 20, scale=2.0),),
                 {"temperature": 0.5, "top_p": 0.8}),
            Case("temperature 1.5, top-k 8, top-p 0.9", (randn(g, 2, 3, 30, scale=3.0),),
                 {"temperature": 1.5, "top_k": 8, "top_p": 0.9}),
            Case("top-k = 2 with a tie at the 2nd value", (tie,), {"top_k": 2}),
        ]
        if hidden:
            cases += [
                Case("float64, temperature 0.7, top-p 0.5", (randn(g, 5, 40, dtype=F64, scale=2.0),),
                     {"temperature": 0.7, "top_p": 0.5}),
                Case("top-k larger than the vocabulary", (randn(g, 2, 6),), {"top_k": 50}),
                Case("tiny top-p keeps only the argmax", (randn(g, 3, 16, scale=2.0),), {"top_p": 0.01}),
                Case("top-p = 0.7 at temperature 3", (nucleus * 3.0,), {"temperature": 3.0, "top_p": 0.7}),
                Case("temperature 4, top-k 5, top-p 0.6 on (2, 2, 64)",
                     (randn(g, 2, 2, 64, scale=4.0),), {"temperature": 4.0, "top_k": 5, "top_p": 0.6}),
                Case("1-D logits, integer temperature 2", (randn(g, 9, scale=2.0),), {"temperature": 2}),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 10.beam_search: the "model" is a random table of log-probabilities given the last two tokens

def _beam_last_only(next_log_probs, prompt, num_beams, steps):
    beams, scores = prompt.reshape(1, -1), torch.zeros(1)
    for _ in range(steps):
        logp = next_log_probs(beams)
        V = logp.shape[-1]
        top = torch.topk(logp.reshape(-1), num_beams)
        parent, token = top.indices // V, top.indices % V
        beams = torch.cat([beams[parent], token[:, None]], 1)
        scores = scores[parent] + top.values
    order = torch.sort(scores, descending=True, stable=True).indices
    return beams[order], scores[order]


def _beam_own_best(next_log_probs, prompt, num_beams, steps):
    seqs, scores = ref.beam_search(next_log_probs, prompt, num_beams, 1)
    for _ in range(steps - 1):
        logp = next_log_probs(seqs)
        best = logp.max(-1)
        seqs = torch.cat([seqs, best.indices[:, None]], 1)
        scores = scores + best.values
    order = torch.sort(scores, descending=True, stable=True).indices
    return seqs[order], scores[order]


def _beam_products(next_log_probs, prompt, num_beams, steps):
    seqs, scores = ref.beam_search(next_log_probs, prompt, num_beams, steps)
    return seqs, scores.exp()


def _beam_copies(next_log_probs, prompt, num_beams, steps):
    beams = prompt.reshape(1, -1).repeat(num_beams, 1)
    scores = torch.zeros(num_beams)
    for _ in range(steps):
        logp = next_log_probs(beams)
        V = logp.shape[-1]
        top = torch.topk((scores[:, None] + logp).reshape(-1), num_beams)
        beams = torch.cat([beams[top.indices // V], (top.indices % V)[:, None]], 1)
        scores = top.values
    return beams, scores


class _TableExercise(Exercise):
    call = calls.table_lm  # the case's log-prob table becomes a trigram LM function


def _table(g, V, dtype=F32, scale=2.0):
    return torch.log_softmax(randn(g, V, V, V, dtype=dtype, scale=scale), dim=-1)


@register
class BeamSearch(_TableExercise):
    """Beam search over summed log-probabilities (= HF generate(num_beams=k) without an end token)."""
    id = "10.beam_search"
    entry = "beam_search"
    forbid = NO_HF_GENERATION
    mistakes = (
        Mistake("beams ranked by the last token only", "rank the candidates by their WHOLE score: "
                "the beam's sum of log-probabilities plus the new token's log-probability.",
                _beam_last_only),
        Mistake("each beam extended by its own best token", "at every step all num_beams * V "
                "continuations compete: keep the num_beams best of them (one beam may have "
                "several children, another none).", _beam_own_best),
        Mistake("scores are products of probabilities", "return the SUM of the generated tokens' "
                "log-probabilities (products of probabilities underflow).", _beam_products),
        Mistake("started from num_beams copies of the prompt", "start from ONE beam (the prompt): "
                "with k identical beams the first step picks the same token k times.", _beam_copies),
    )

    def reference(self, next_log_probs, prompt, num_beams, steps):
        return ref.beam_search(next_log_probs, prompt, num_beams, steps)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, V, L, k, steps, dtype=F32, scale=2.0):
            prompt = torch.randint(0, V, (L,), generator=g)
            return Case(label, (_table(g, V, dtype, scale), prompt, k, steps))

        cases = [
            case("V = 8, 3 beams, 4 steps", 8, 2, 3, 4),
            case("V = 6, 2 beams, 5 steps, flat model", 6, 3, 2, 5, scale=0.5),
            case("V = 10, 4 beams, 6 steps", 10, 4, 4, 6, scale=3.0),
            case("one beam is greedy search", 7, 2, 1, 5),
        ]
        if hidden:
            cases += [
                case("float64, V = 12, 5 beams, 5 steps", 12, 3, 5, 5, dtype=F64),
                case("one step", 9, 2, 3, 1),
                case("as many beams as tokens", 5, 2, 5, 3),
                case("V = 16, 3 beams, 8 steps", 16, 5, 3, 8, scale=2.5),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 10.distinct_n

def _distinct_concat(sequences, n):
    return ref.distinct_n([[t for s in sequences for t in s]], n)


def _distinct_mean(sequences, n):
    vals = [ref.distinct_n([s], n) for s in sequences if len(s) >= n]
    return sum(vals) / len(vals) if vals else 0.0


def _distinct_count(sequences, n):
    return float(len({tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)}))


def _distinct_over_tokens(sequences, n):
    grams = {tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)}
    total = sum(len(s) for s in sequences)
    return len(grams) / total if total else 0.0


@register
class DistinctN(Exercise):
    """Distinct-n over a set of generations."""
    id = "10.distinct_n"
    entry = "distinct_n"
    mistakes = (
        Mistake("n-grams across generations", "count each generation's own n-grams: joining the "
                "generations creates n-grams that no generation contains.", _distinct_concat),
        Mistake("averaged per generation", "distinct-n pools all generations: distinct n-grams of "
                "the whole set over all its n-grams (repeats ACROSS generations count).", _distinct_mean),
        Mistake("not divided by the number of n-grams", "return a ratio: distinct n-grams / all "
                "n-grams.", _distinct_count),
        Mistake("divided by the number of tokens", "a sequence of L tokens has L - n + 1 n-grams; "
                "divide by their total.", _distinct_over_tokens),
    )

    def reference(self, sequences, n):
        return ref.distinct_n(sequences, n)

    call = calls.scalar

    def cases(self, seed, hidden):
        rng = random.Random(seed)

        def seqs(m, lo, hi, V):
            return [[rng.randrange(V) for _ in range(rng.randint(lo, hi))] for _ in range(m)]

        same = [1, 2, 3, 1, 2]
        cases = [
            Case("bigrams of three generations", (seqs(3, 5, 9, 4), 2)),
            Case("the same generation twice", ([same, list(same)], 2)),
            Case("unigrams", (seqs(4, 3, 8, 6), 1)),
            Case("trigrams, boundary n-grams would be new", ([[1, 2], [3, 4, 5], [1, 2, 3]], 2)),
        ]
        if hidden:
            cases += [
                Case("a generation shorter than n", ([[7], [1, 2, 3, 4]], 3)),
                Case("no n-gram at all", ([[1], [2]], 2)),
                Case("many repetitive generations", (seqs(10, 6, 12, 3), 3)),
                Case("4-grams", (seqs(5, 4, 10, 5), 4)),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 10.math_verdicts

def _verdicts(docs, *, correct_all=True, grammar=True, fix=True, split=True):
    out = []
    for doc in docs:
        if not grammar:
            wrong = any(int(m[4]) != ref.true_result(int(m[1]), m[2], int(m[3]))
                        for m in ref.PROBLEM.finditer(doc))
            out.append(ref.HALLUCINATED if wrong else ref.CORRECT)
            continue
        if document_log_prob(doc) > float("-inf"):
            out.append(ref.CORRECT)
            continue
        if not split:
            out.append(ref.HALLUCINATED if fix else ref.UNGRAMMATICAL)
            continue
        fixed = ref.corrected(doc) if correct_all else ref.PROBLEM.sub(
            lambda m: f"{m[1]} {m[2]} {m[3]} = {ref.true_result(int(m[1]), m[2], int(m[3]))}", doc, count=1)
        out.append(ref.HALLUCINATED if document_log_prob(fixed) > float("-inf") else ref.UNGRAMMATICAL)
    return torch.tensor(out, dtype=torch.int64)


MATH = Language(domain_weights=(0.0, 1.0, 0.0))


def _wrong(doc, rng, which=None):
    ms = list(ref.PROBLEM.finditer(doc))
    m = ms[rng.randrange(len(ms)) if which is None else which]
    r = int(m[4]) + rng.choice([-10, -2, -1, 1, 2, 10])
    r = r if r >= 0 else int(m[4]) + 1
    return doc[:m.start(4)] + str(r) + doc[m.end(4):]


def _math_docs(seed, n, rng):
    docs = documents(n, seed, MATH)
    out = []
    for i, d in enumerate(docs):
        kind = i % 5
        if kind == 1:
            d = _wrong(d, rng)
        elif kind == 2:
            d = d.replace(" = ", " == ", 1)  # ungrammatical, results right
        elif kind == 3:
            d = _wrong(d, rng).replace("Math: ", "Math: the ", 1)  # wrong AND ungrammatical
        elif kind == 4 and d.count("=") >= 2:
            d = _wrong(d, rng, which=-1)  # the LAST result is the wrong one
        out.append(d)
    return out


@register
class MathVerdicts(Exercise):
    """Correct, fluent-but-wrong (hallucinated) or ungrammatical, judged by the exact scorer."""
    id = "10.math_verdicts"
    entry = "math_verdicts"
    mistakes = (
        Mistake("every out-of-language document called a hallucination", "first correct every "
                "stated result; only if the corrected document is in the language was the text "
                "fluent and the FACT wrong (1); otherwise it is ungrammatical (2).",
                knob(_verdicts, split=False, fix=True)),
        Mistake("every out-of-language document called ungrammatical", "a document whose only "
                "fault is a wrong result is fluent but wrong (1): correct the results and score "
                "it again.", knob(_verdicts, split=False, fix=False)),
        Mistake("only the first result corrected", "correct EVERY `A op B = R` of the document "
                "(re.sub without count), then score it.", knob(_verdicts, correct_all=False)),
        Mistake("arithmetic checked, grammar ignored", "a document can be ungrammatical with "
                "right sums: ask the language's scorer (document_log_prob) first.",
                knob(_verdicts, grammar=False)),
    )

    def reference(self, docs):
        return ref.math_verdicts(docs)

    call = calls.int64_sequence

    def cases(self, seed, hidden):
        rng = random.Random(seed)
        two = [d for d in documents(60, seed + 1, MATH) if d.count("=") >= 2][:3]
        last_wrong = [_wrong(d, rng, which=-1) for d in two]
        cases = [
            Case("ten generated math documents", (_math_docs(seed, 10, rng),)),
            Case("a story and a review are correct too", (documents(4, seed + 2),)),
            Case("the last of several results is wrong", (last_wrong + two[:1],)),
            Case("7 * 12 = 84: right, but the language never multiplies by 12",
                 (["Math: 7 * 12 = 84.\n", "Math: 7 * 2 = 14.\n", "Math: 7 * 2 = 15.\n"],)),
        ]
        if hidden:
            cases += [
                Case("twenty documents", (_math_docs(seed + 7, 20, rng),)),
                Case("3 - 5 = 2: no negative problems", (["Math: 3 - 5 = 2.\n", "Math: 5 - 3 = 2.\n"],)),
                Case("a truncated document", (["Math: 12 + 30 = 42.", "Math: 12 + 30 = 41.\n"],)),
            ]
        return cases
