"""Chapter 04's XLNet references (reference/xlnet.py) against independent authorities:

* a plain loop over the definition (t-th of the order sees the s-th iff s <= t, or s < t);
* Hugging Face's ``DataCollatorForPermutationLanguageModeling``, whose ``perm_mask``
  (1 = may NOT attend, the query stream's mask) equals ``~query`` entry for entry, for a pure
  permutation and with partial prediction;
* Hugging Face's ``XLNetLMHeadModel`` with random weights: the content-stream mask it derives
  from ``perm_mask`` equals the course's content mask; its logits from the course's
  ``(perm_mask, target_mapping)`` equal those from the collator's; and a target's prediction
  does not depend on its own token nor on any later token of the order (no leak).
"""

import pytest
import torch

from llmcourse.reference import xlnet as xlnet_ref

transformers = pytest.importorskip("transformers")


def perms(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(T, generator=g) for _ in range(B)])


# --- the definition ------------------------------------------------------------------------

def masks_by_loop(z, num_predict):
    """content, query, targets of ONE order z (T,), written from the definition."""
    T = len(z)
    c = T - num_predict
    content = torch.zeros(T, T, dtype=torch.bool)
    query = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):  # z[t] is the query, predicted t-th
        for s in range(T):  # z[s] is the key, predicted s-th
            content[z[t], z[s]] = s <= t or s < c
            query[z[t], z[s]] = s < t or s < c
    targets = torch.zeros(T, dtype=torch.bool)
    targets[z[c:]] = True
    return content, query, targets


def test_ranks_invert_the_order():
    z = perms(3, 9, 0)
    rank = xlnet_ref.factorisation_ranks(z)
    assert torch.equal(torch.gather(rank, 1, z), torch.arange(9).expand(3, 9))
    assert torch.equal(torch.gather(z, 1, rank), torch.arange(9).expand(3, 9))


@pytest.mark.parametrize("T", [1, 2, 5, 11])
def test_two_stream_masks_equal_the_definition(T):
    z = perms(4, T, T)
    content, query = xlnet_ref.two_stream_masks(z)
    assert content.shape == query.shape == (4, T, T) and content.dtype == torch.bool
    for b in range(4):
        c_loop, q_loop, _ = masks_by_loop(z[b].tolist(), T)
        assert torch.equal(content[b], c_loop) and torch.equal(query[b], q_loop)
        c1, q1 = xlnet_ref.two_stream_masks(z[b])  # unbatched (T,) -> (T, T)
        assert torch.equal(c1, c_loop) and torch.equal(q1, q_loop)
    assert torch.equal(content & ~query, torch.eye(T, dtype=torch.bool).expand(4, T, T))


def test_identity_order_is_the_causal_mask():
    content, query = xlnet_ref.two_stream_masks(torch.arange(6))
    assert torch.equal(content, torch.ones(6, 6, dtype=torch.bool).tril())
    assert torch.equal(query, torch.ones(6, 6, dtype=torch.bool).tril(-1))


@pytest.mark.parametrize("T,K", [(6, 6), (6, 1), (8, 3), (10, 4)])
def test_partial_prediction_equals_the_definition(T, K):
    z = perms(3, T, 10 * T + K)
    content, query, targets = xlnet_ref.partial_prediction(z, K)
    for b in range(3):
        expected = masks_by_loop(z[b].tolist(), K)
        for got, want in zip((content[b], query[b], targets[b]), expected):
            assert torch.equal(got, want)
    assert (targets.sum(-1) == K).all()


# --- Hugging Face --------------------------------------------------------------------------

class _Tok:
    """Just enough tokenizer for DataCollatorForPermutationLanguageModeling (no special ids)."""
    mask_token, mask_token_id = "<mask>", 4
    pad_token, pad_token_id = "<pad>", 0

    def get_special_tokens_mask(self, ids, already_has_special_tokens=True):
        return [0] * len(ids)


def collator_batch(B, T, seed, plm_probability):
    from transformers import DataCollatorForPermutationLanguageModeling

    torch.manual_seed(seed)  # the collator draws from the global generator
    ids = torch.randint(5, 30, (B, T))
    collator = DataCollatorForPermutationLanguageModeling(_Tok(), plm_probability=plm_probability)
    return ids, collator.torch_mask_tokens(ids.clone())


def order_from_perm_mask(perm_mask, targets):
    """The factorisation order the collator sampled: context first (in position order), then
    the targets by how many targets each may attend to (its rank among them)."""
    orders = []
    for pm, tg in zip(perm_mask, targets):
        seen = ((pm == 0) & tg[None, :]).sum(-1)
        ctx = torch.nonzero(~tg).squeeze(1)
        tgt = torch.nonzero(tg).squeeze(1)
        orders.append(torch.cat([ctx, tgt[torch.argsort(seen[tgt])]]))
    return torch.stack(orders)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_query_mask_is_the_collators_perm_mask_for_a_pure_permutation(seed):
    _, (_, perm_mask, target_mapping, labels) = collator_batch(3, 12, seed, plm_probability=1.0)
    targets = labels != -100
    assert targets.all()  # plm_probability = 1: every token predicted, no context
    z = order_from_perm_mask(perm_mask, targets)
    _, query = xlnet_ref.two_stream_masks(z)
    assert torch.equal(perm_mask.bool(), ~query)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_partial_prediction_is_the_collators_perm_mask(seed):
    _, (_, perm_mask, _, labels) = collator_batch(4, 16, seed, plm_probability=1 / 3)
    targets = labels != -100
    for b in range(4):  # one K per call: each row separately
        K = int(targets[b].sum())
        z = order_from_perm_mask(perm_mask[b:b + 1], targets[b:b + 1])
        _, query, tg = xlnet_ref.partial_prediction(z, K)
        assert torch.equal(perm_mask[b].bool(), ~query[0]) and torch.equal(tg[0], targets[b])


def tiny_xlnet(n_layer=2, seed=0):
    torch.manual_seed(seed)
    config = transformers.XLNetConfig(vocab_size=30, d_model=16, n_layer=n_layer, n_head=2,
                                      d_inner=32, dropout=0.0, initializer_range=0.3)
    return transformers.XLNetLMHeadModel(config).eval()


def test_content_stream_is_what_hf_xlnet_derives():
    """XLNetModel turns perm_mask into the content stream's mask (every position also sees
    itself); captured at the first layer, both equal the course's masks."""
    model = tiny_xlnet()
    captured = {}

    def grab(module, args, kwargs):
        captured["h"], captured["g"] = kwargs["attn_mask_h"], kwargs["attn_mask_g"]

    model.transformer.layer[0].register_forward_pre_hook(grab, with_kwargs=True)
    z = perms(3, 9, 5)
    for K in (9, 4, 1):
        perm_mask, mapping = xlnet_ref.hf_inputs(z, K)
        with torch.no_grad():
            model(torch.randint(5, 30, (3, 9)), perm_mask=perm_mask, target_mapping=mapping)
        content, query, _ = xlnet_ref.partial_prediction(z, K)
        blocked_h = captured["h"][..., 0].permute(2, 0, 1) > 0  # HF: (i, j, batch, 1), 1 = blocked
        blocked_g = captured["g"][..., 0].permute(2, 0, 1) > 0
        assert torch.equal(~blocked_h, content) and torch.equal(~blocked_g, query)


@pytest.mark.parametrize("seed", [0, 1])
def test_hf_logits_from_course_masks_equal_the_collators(seed):
    ids, (_, perm_mask, eye_mapping, labels) = collator_batch(2, 14, seed, plm_probability=1 / 3)
    model = tiny_xlnet(seed=seed)
    targets = labels != -100
    for b in range(2):
        K = int(targets[b].sum())
        z = order_from_perm_mask(perm_mask[b:b + 1], targets[b:b + 1])
        ours_pm, ours_map = xlnet_ref.hf_inputs(z, K)
        with torch.no_grad():
            ours = model(ids[b:b + 1], perm_mask=ours_pm, target_mapping=ours_map).logits[0]
            theirs = model(ids[b:b + 1], perm_mask=perm_mask[b:b + 1],
                           target_mapping=eye_mapping[b:b + 1]).logits[0]
        c = 14 - K
        torch.testing.assert_close(ours, theirs[z[0, c:]], rtol=1e-5, atol=1e-5)


def test_a_target_never_sees_its_own_token_nor_later_ones():
    """p(x[z_t] | x[z_<t]): the prediction of z_t is unchanged when the tokens at z_t, z_t+1,
    ... change, and changes when an earlier one does (two layers: the content stream carries
    information between layers, so a leak there would show)."""
    model = tiny_xlnet(n_layer=2, seed=3)
    T, K = 10, 4
    z = perms(1, T, 7)
    perm_mask, mapping = xlnet_ref.hf_inputs(z, K)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 30, (1, T), generator=g)
    with torch.no_grad():
        base = model(ids, perm_mask=perm_mask, target_mapping=mapping).logits
        for k in range(K):
            t = T - K + k
            later = ids.clone()
            later[0, z[0, t:]] = torch.randint(5, 30, (T - t,), generator=g)
            out = model(later, perm_mask=perm_mask, target_mapping=mapping).logits
            torch.testing.assert_close(out[0, k], base[0, k], rtol=1e-5, atol=1e-5)
            earlier = ids.clone()
            earlier[0, z[0, t - 1]] = (ids[0, z[0, t - 1]] - 5 + 1) % 25 + 5
            out = model(earlier, perm_mask=perm_mask, target_mapping=mapping).logits
            assert (out[0, k] - base[0, k]).abs().max() > 1e-3


# --- the checks accept other correct answers -------------------------------------------------

def _masks_argsort(z):
    rank = z.argsort(dim=-1)  # the inverse of a permutation is its argsort
    return rank[..., None, :] <= rank[..., :, None], rank[..., None, :] < rank[..., :, None]


def _masks_loop(z):
    batched = z.dim() == 2
    zs = z if batched else z[None]
    out = [masks_by_loop(row.tolist(), len(row))[:2] for row in zs]
    content, query = torch.stack([c for c, _ in out]), torch.stack([q for _, q in out])
    return (content, query) if batched else (content[0], query[0])


def _partial_loop(z, num_predict):
    batched = z.dim() == 2
    zs = z if batched else z[None]
    out = [masks_by_loop(row.tolist(), num_predict) for row in zs]
    parts = [torch.stack([o[k] for o in out]) for k in range(3)]
    return tuple(parts) if batched else tuple(p[0] for p in parts)


@pytest.mark.parametrize("exid,fn", [("04.xlnet_masks", _masks_argsort), ("04.xlnet_masks", _masks_loop),
                                     ("04.xlnet_partial", _partial_loop)])
def test_other_correct_answers_pass(exid, fn):
    from llmcourse.checks import get, run

    assert run(get(exid), fn).status == "pass"
    assert run(get(exid), fn, seed=5, hidden=True).status == "pass"
