"""ALBERT's and BERT's parameter counts against Hugging Face's AlbertModel / BertModel with
random weights (built from a config on the meta device: nothing downloaded, nothing
allocated), sum of p.numel(); and the published sizes (Lan et al., 2020, Table 1)."""

import pytest
import torch

from llmcourse.checks.ch07.counting import albert_config
from llmcourse.reference import scaling as scaling_ref

transformers = pytest.importorskip("transformers")

ALBERT_CONFIGS = [
    albert_config(),  # ALBERT-base
    albert_config(H=1024, L=24, heads=16, I=4096),  # large
    albert_config(H=2048, L=24, heads=16, I=8192),  # xlarge
    albert_config(H=4096, L=12, heads=64, I=16384),  # xxlarge
    albert_config(V=500, E=32, H=64, L=12, heads=4, I=256, P=128, T=2, G=4, inner=2),
    albert_config(V=300, E=48, H=48, L=6, heads=4, I=96, P=64, T=3, G=3),
    albert_config(V=77, E=8, H=24, L=5, heads=2, I=40, P=20, T=1, G=1, inner=3),
]


def numel(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cfg", ALBERT_CONFIGS, ids=lambda c: f"H{c['hidden_size']}-G{c['num_hidden_groups']}x{c['inner_group_num']}")
def test_albert_count_matches_hf_albert_model(cfg):
    with torch.device("meta"):
        model = transformers.AlbertModel(transformers.AlbertConfig(**cfg))
    assert scaling_ref.albert_param_count(cfg) == numel(model)
    # the count reads a config as Hugging Face writes it, too
    assert scaling_ref.albert_param_count(model.config.to_dict()) == numel(model)


def test_albert_shares_layers_whatever_the_depth():
    """Cross-layer sharing: 12 or 48 layers store the same parameters (HF agrees)."""
    counts = []
    for L in (12, 48):
        with torch.device("meta"):
            model = transformers.AlbertModel(transformers.AlbertConfig(**albert_config(L=L)))
        counts.append(numel(model))
    assert counts[0] == counts[1] == scaling_ref.albert_param_count(albert_config(L=48))


@pytest.mark.parametrize("V,H,L,I", [(30522, 768, 12, 3072), (30522, 1024, 24, 4096), (99, 32, 3, 80)])
def test_bert_count_matches_hf_bert_model(V, H, L, I):
    cfg = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, intermediate_size=I,
               num_attention_heads=max(1, H // 64))
    with torch.device("meta"):
        model = transformers.BertModel(transformers.BertConfig(**cfg))
    assert scaling_ref.bert_param_count(cfg) == numel(model)


def test_published_sizes():
    """Lan et al. (2020), Table 1 (vocabulary 30,000): BERT-base 108M, BERT-large 334M,
    ALBERT-base 12M, ALBERT-large 18M, ALBERT-xlarge 60M, to the paper's rounding. BERT-base's
    108M is the count without the pooler (108.5M; 109.1M with it). ALBERT-xxlarge's published
    235M is NOT what the architecture stores: 222.6M, the count Hugging Face's AlbertModel
    gives too (test above); the chapter says so."""
    bert = lambda H, L, I: scaling_ref.bert_param_count(  # noqa: E731
        dict(vocab_size=30000, hidden_size=H, num_hidden_layers=L, intermediate_size=I))
    pooler = 768 * 768 + 768
    assert bert(768, 12, 3072) == 109_081_344
    assert round((bert(768, 12, 3072) - pooler) / 1e6) == 108
    assert round(bert(1024, 24, 4096) / 1e6) == 335 and int(bert(1024, 24, 4096) / 1e6) == 334
    albert = scaling_ref.albert_param_count
    assert albert(albert_config()) == 11_683_584
    assert round(albert(albert_config()) / 1e6) == 12
    assert round(albert(albert_config(H=1024, L=24, heads=16, I=4096)) / 1e6) == 18
    assert round(albert(albert_config(H=2048, L=24, heads=16, I=8192)) / 1e7) == 6
    assert albert(albert_config(H=4096, L=12, heads=64, I=16384)) == 222_595_584
