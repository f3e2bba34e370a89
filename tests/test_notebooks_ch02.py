"""Chapter 02 solution notebooks against independent authorities, outside nbgrader: the
instructor's answers (the code learners are shown to be right) equal PyTorch's
nn.MultiheadAttention / nn.TransformerEncoderLayer / nn.TransformerDecoderLayer and Hugging
Face's GPT2LMHeadModel, and the notebook's greedy generation with and without a KV cache
gives Hugging Face's tokens. Also: no chapter-02 notebook or page imports `transformers`
(a test-only dependency)."""

from __future__ import annotations

import ast
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from llmcourse.reference import attention as attention_ref
from llmcourse.reference import gpt as gpt_ref

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "solutions" / "02-attention"
F64 = torch.float64
torch.set_num_threads(1)


def _definitions_only(src: str) -> bool:
    """A cell made of imports, defs, classes and bare calls (no demo assignments)."""
    tree = ast.parse(src)
    return all(isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Expr))
               for n in tree.body)


def notebook_namespace(name: str) -> dict:
    """Execute the definitions of a solution notebook (not its checks or demos)."""
    nb = json.loads((CHAPTER / f"{name}.ipynb").read_text(encoding="utf-8"))
    module = types.ModuleType(f"notebook_ch02_{name}")  # dataclasses look their module up
    sys.modules[module.__name__] = module
    ns = module.__dict__
    for cell in nb["cells"]:
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        if cell["cell_type"] != "code" or "check(" in src or "check_all(" in src:
            continue
        if _definitions_only(src):
            exec(compile(src, f"{name}.ipynb", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def sdpa_nb():
    return notebook_namespace("sdpa")


@pytest.fixture(scope="module")
def multihead_nb():
    return notebook_namespace("multihead")


@pytest.fixture(scope="module")
def transformer_nb():
    return notebook_namespace("transformer")


def randomize(module: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=F64).to(p.dtype))
    return module


def test_worked_example_through_the_notebook_answer(sdpa_nb):
    X = torch.tensor([[.1, .2, .3, .4], [.5, .6, .7, .8], [.9, 1.0, 1.1, 1.2]], dtype=F64)
    QKV = X @ torch.eye(4, 3, dtype=F64)
    out = sdpa_nb["scaled_dot_product_attention"](QKV, QKV, QKV)
    want = torch.tensor([[0.5368, 0.6368, 0.7368], [0.6078, 0.7078, 0.8078],
                         [0.6714, 0.7714, 0.8714]], dtype=F64)
    torch.testing.assert_close(out, want, rtol=0, atol=5e-5)
    mask = sdpa_nb["causal_mask"](4) & sdpa_nb["padding_mask"](torch.tensor([4, 2]), 4)[:, None, :]
    assert mask.dtype == torch.bool and mask.shape == (2, 4, 4)


def test_notebook_mha_equals_torch_multihead_attention(multihead_nb):
    torch.manual_seed(0)
    theirs = randomize(nn.MultiheadAttention(24, 3, dropout=0.0, batch_first=True, dtype=F64), 1)
    ours = attention_ref.load_mha_from_torch(multihead_nb["MultiHeadAttention"](24, 3).double(), theirs)
    g = torch.Generator().manual_seed(2)
    x, mem = torch.randn(2, 5, 24, generator=g, dtype=F64), torch.randn(2, 7, 24, generator=g, dtype=F64)
    keep = attention_ref.padding_mask(torch.tensor([7, 2]), 7)
    with torch.no_grad():
        want, _ = theirs(x, mem, mem, key_padding_mask=~keep, need_weights=False)
        torch.testing.assert_close(ours(x, mem, keep[:, None, :]), want, rtol=1e-10, atol=1e-12)
        want, _ = theirs(x, x, x, attn_mask=~attention_ref.causal_mask(5), need_weights=False)
        torch.testing.assert_close(ours(x, mask=attention_ref.causal_mask(5)), want, rtol=1e-10, atol=1e-12)


def test_notebook_layer_norm_and_ffn_equal_torch(multihead_nb):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 10, generator=g, dtype=F64)
    w, b = torch.randn(10, generator=g, dtype=F64), torch.randn(10, generator=g, dtype=F64)
    torch.testing.assert_close(multihead_nb["layer_norm"](x, w, b),
                               nn.functional.layer_norm(x, (10,), w, b))
    lin1, lin2 = nn.Linear(10, 40, dtype=F64), nn.Linear(40, 10, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(
            multihead_nb["feed_forward"](x, lin1.weight, lin1.bias, lin2.weight, lin2.bias),
            lin2(torch.relu(lin1(x))))


def test_notebook_layers_equal_torch_transformer_layers(transformer_nb):
    nb = transformer_nb
    torch.manual_seed(4)
    pt_enc = randomize(nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, batch_first=True,
                                                  dtype=F64), 5).train()
    pt_dec = randomize(nn.TransformerDecoderLayer(16, 2, 24, dropout=0.0, batch_first=True,
                                                  dtype=F64), 6).train()
    enc = nb["copy_pytorch_weights"](nb["EncoderLayer"](16, 4, 24).double(), pt_enc)
    dec = nb["copy_pytorch_weights"](nb["DecoderLayer"](16, 2, 24).double(), pt_dec)
    g = torch.Generator().manual_seed(7)
    src, tgt = torch.randn(3, 6, 16, generator=g, dtype=F64), torch.randn(3, 4, 16, generator=g, dtype=F64)
    keep = attention_ref.padding_mask(torch.tensor([6, 3, 1]), 6)
    with torch.no_grad():
        mem_pt = pt_enc(src, src_mask=~attention_ref.causal_mask(6), src_key_padding_mask=~keep)
        mem = enc(src, attention_ref.causal_mask(6) & keep[:, None, :])
        torch.testing.assert_close(mem, mem_pt, rtol=1e-10, atol=1e-10)
        out_pt = pt_dec(tgt, mem_pt, tgt_mask=~attention_ref.causal_mask(4), memory_key_padding_mask=~keep)
        out = dec(tgt, mem, attention_ref.causal_mask(4), keep[:, None, :])
        torch.testing.assert_close(out, out_pt, rtol=1e-10, atol=1e-10)


def test_notebook_gpt_equals_hf_gpt2_and_generates_its_tokens(transformer_nb):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=61, n_positions=40,
                                     bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(0)
    hf = randomize(transformers.GPT2LMHeadModel(config).eval().double(), 8)
    nb = transformer_nb
    ours = nb["GPT"](nb["GPTConfig"](vocab_size=61, block_size=40, n_layer=2, n_head=4, n_embd=32))
    ours = gpt_ref.load_hf_gpt2_state(ours.double(), hf).eval()
    idx = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = hf(idx).logits
        assert want.abs().max() > 1.0
        torch.testing.assert_close(ours(idx), want, rtol=1e-10, atol=1e-10)
        prompt = idx[:, :5]
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20,
                             do_sample=False, pad_token_id=0)
    simple = nb["greedy_generate"](ours, prompt, 20)
    cached = nb["cached_generate"](ours, prompt, 20, 4)
    assert torch.equal(simple, theirs) and torch.equal(cached, theirs)
    assert len(set(cached[0, 5:].tolist())) > 1


def test_chapter_never_imports_transformers():
    """Except bridge.ipynb, whose subject is the bridge to Hugging Face (transformers is a core
    dependency for it), and the challenge, whose target is Hugging Face's GPT-2; everything else in the chapter is built from PyTorch alone."""
    pattern = re.compile(r"^\s*(import transformers|from transformers)", re.M)
    assert pattern.search((CHAPTER / "bridge.ipynb").read_text(encoding="utf-8").replace("\\n", "\n"))
    for path in CHAPTER.iterdir():
        if path.name in ("bridge.ipynb", "challenge.ipynb"):  # the challenge: equal HF's GPT-2
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ipynb":
            text = "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                             for c in json.loads(text)["cells"])
        assert not pattern.search(text), f"{path.name} imports transformers (test-only dependency)"
