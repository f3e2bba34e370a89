"""Chapter 04: pre-training objectives.

* :func:`causal_lm_loss`: next-token cross-entropy with the shift done inside and an ignore
  index (Hugging Face's convention: ``labels`` are the input ids, ``-100`` = not scored).
* :func:`mask_tokens`: BERT's masked-LM corruption, 15% of the non-special positions, of
  which 80% become ``[MASK]``, 10% a random token and 10% stay. The random draws are the
  same, in the same order, as Hugging Face's ``DataCollatorForLanguageModeling`` (so, given
  the same generator, the two agree token for token).
* :func:`nsp_pairs`: BERT's next-sentence-prediction pairs, 50% true next sentence, 50% a
  random sentence of another document.
* :func:`prefix_lm_mask`: the attention mask of a prefix LM (UniLM, T5's prefix LM, GLM):
  bidirectional over the prefix, causal after it.
* :func:`electra_replace` and :func:`electra_loss`: ELECTRA's replaced-token detection.
* :func:`eval_windows` (defined in :mod:`.training`, its user): consecutive evaluation windows.

Randomised functions take an explicit ``torch.Generator`` and document the exact draws they
make, so the same generator state gives the same answer (that is how the course checks them).
Boolean attention masks are True where attention is allowed (see ``reference.attention``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .training import eval_windows  # noqa: F401  (chapter 04's exercise; the trainer uses it)

IGNORE_INDEX = -100  # PyTorch's and Hugging Face's default "do not score this label"


# ---------------------------------------------------------------------------------------
# Causal (autoregressive) language modelling

def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) with the shift done here.

    logits: (B, T, V) computed from input ids (B, T); labels: (B, T), usually the input ids
    themselves, with ``ignore_index`` where no loss is wanted (padding, a prompt). Position t
    predicts labels[:, t + 1]: the last position has no target and labels[:, 0] is never a
    target. The mean runs over the targets that are not ignored (at least one must remain).
    Returns a 0-dim tensor of the logits' dtype; equals Hugging Face's ``ForCausalLMLoss``.
    """
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    valid = shift_labels != ignore_index
    logp = torch.log_softmax(shift_logits, dim=-1)
    picked = logp.gather(-1, shift_labels.masked_fill(~valid, 0).unsqueeze(-1)).squeeze(-1)
    return -(picked.masked_fill(~valid, 0.0).sum() / valid.sum())


# ---------------------------------------------------------------------------------------
# BERT: masked language modelling and next-sentence prediction

def mask_tokens(input_ids: torch.Tensor, special_mask: torch.Tensor, mask_token_id: int,
                vocab_size: int, generator: torch.Generator, mlm_probability: float = 0.15
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-LM corruption. Returns (corrupted input ids, labels), both like input_ids.

    input_ids: (B, T) int64; special_mask: (B, T) bool, True at [CLS], [SEP], [PAD] ...
    (never selected). Each other position is selected with probability ``mlm_probability``;
    a selected position becomes [MASK] with probability 0.8, else (probability 0.5 of the
    remaining 0.2) a uniformly random id in [0, vocab_size), else it keeps its token.
    labels = the original id at selected positions, -100 elsewhere.

    The draws, in this order, all with ``generator`` (as Hugging Face's collator makes them):
    1. selected = bernoulli(full(shape, mlm_probability) with 0 at special positions)
    2. to_mask  = bernoulli(full(shape, 0.8)) & selected
    3. to_random = bernoulli(full(shape, 0.5)) & selected & ~to_mask
    4. random ids = randint(vocab_size, shape)
    """
    shape = input_ids.shape
    probs = torch.full(shape, mlm_probability).masked_fill(special_mask, 0.0)
    selected = torch.bernoulli(probs, generator=generator).bool()
    labels = input_ids.masked_fill(~selected, IGNORE_INDEX)
    to_mask = torch.bernoulli(torch.full(shape, 0.8), generator=generator).bool() & selected
    to_random = (torch.bernoulli(torch.full(shape, 0.5), generator=generator).bool()
                 & selected & ~to_mask)
    random_ids = torch.randint(vocab_size, shape, dtype=torch.long, generator=generator)
    corrupted = input_ids.masked_fill(to_mask, mask_token_id)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


def nsp_pairs(doc_ids: torch.Tensor, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-sentence-prediction pairs from a corpus of sentences grouped in documents.

    doc_ids: (N,) int64, the document of each sentence, non-decreasing (each document's
    sentences are contiguous and in order); at least two documents. Sentence A of a pair is
    every sentence that has a next sentence in its own document. With probability 1/2 the
    pair is (A, the next sentence, is_next=1), else (A, a uniformly random sentence of another
    document, is_next=0). Returns (a, b, is_next), each (n_pairs,) int64, indices into the
    sentences.

    The draws, in this order, with ``generator``: ``coin = rand(n_pairs) < 0.5`` (True =
    true next), then ``u = rand(n_pairs)``; the random sentence is the j-th, j = floor(u * M),
    of the M sentences outside A's document, counted in corpus order.
    """
    a = torch.nonzero(doc_ids[1:] == doc_ids[:-1]).squeeze(1)
    n = a.numel()
    is_next = torch.rand(n, generator=generator) < 0.5
    u = torch.rand(n, generator=generator)
    doc = doc_ids[a]
    start = torch.searchsorted(doc_ids, doc, right=False)  # first sentence of A's document
    size = torch.searchsorted(doc_ids, doc, right=True) - start
    j = (u * (doc_ids.numel() - size)).long()  # index among the other documents' sentences
    b_random = torch.where(j < start, j, j + size)  # skip A's own document
    b = torch.where(is_next, a + 1, b_random)
    return a, b, is_next.long()


# ---------------------------------------------------------------------------------------
# Prefix LM

def prefix_lm_mask(T: int, prefix_len: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool attention mask of a prefix LM, True = query i may attend to key j.

    prefix_len: (B,) int64 in [0, T]. Keys inside the prefix (j < prefix_len) are visible to
    every query (the prefix is read bidirectionally); other keys only causally (j <= i).
    prefix_len 0 gives the causal mask, prefix_len T full attention.
    """
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (j <= i)[None] | (j[None] < prefix_len[:, None, None])


# ---------------------------------------------------------------------------------------
# ELECTRA: replaced-token detection

def electra_replace(input_ids: torch.Tensor, masked: torch.Tensor, gen_logits: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the masked positions with samples from the generator; label what changed.

    input_ids: (B, T) int64 original tokens; masked: (B, T) bool, the positions the generator
    predicted; gen_logits: (B, T, V) the generator's logits. Samples by the Gumbel-max trick
    (as ELECTRA's code does): ``u = rand(gen_logits.shape, dtype=gen_logits.dtype)`` with
    ``generator``, sample = argmax(gen_logits - log(-log(u))) over V. Returns
    (corrupted ids (B, T) int64, discriminator labels (B, T) int64): label 1 where the
    corrupted token differs from the original, 0 elsewhere - a sample that happens to equal
    the original token counts as original (label 0).
    """
    u = torch.rand(gen_logits.shape, dtype=gen_logits.dtype, generator=generator)
    sampled = (gen_logits - torch.log(-torch.log(u))).argmax(dim=-1)
    corrupted = torch.where(masked, sampled, input_ids)
    return corrupted, (corrupted != input_ids).long()


def electra_loss(gen_logits: torch.Tensor, mlm_labels: torch.Tensor, disc_logits: torch.Tensor,
                 disc_labels: torch.Tensor, attention_mask: torch.Tensor,
                 disc_weight: float = 50.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ELECTRA's joint loss: (total, generator loss, discriminator loss), 0-dim tensors.

    gen_logits (B, T, V) and mlm_labels (B, T) (-100 = not masked): the generator's masked-LM
    cross-entropy, a mean over the masked positions. disc_logits (B, T) (one logit per
    position, > 0 = "replaced"), disc_labels (B, T) in {0, 1}, attention_mask (B, T) bool
    (False = padding): the discriminator's binary cross-entropy, a mean over the real
    (non-padding) positions. total = gen_loss + disc_weight * disc_loss (lambda = 50).
    """
    gen_loss = F.cross_entropy(gen_logits.reshape(-1, gen_logits.shape[-1]),
                               mlm_labels.reshape(-1), ignore_index=IGNORE_INDEX)
    per_pos = F.binary_cross_entropy_with_logits(disc_logits, disc_labels.to(disc_logits.dtype),
                                                 reduction="none")
    disc_loss = per_pos[attention_mask].mean()
    return gen_loss + disc_weight * disc_loss, gen_loss, disc_loss
