"""The shortcut inspector: it reads code, resolves aliases and follows helpers."""

from llmcourse.checks.core import Rule
from llmcourse.checks.forbidden import violations_for

RULES = (Rule("torch.nn.functional.softmax", "no"), Rule(".log_softmax", "no"),
         Rule("llmcourse.reference", "no"))


def names(src: str, entry: str = "f") -> list[str]:
    return [v.name for v in violations_for(entry, RULES, [("cell", src)])]


def test_aliases_and_methods():
    assert names("import torch.nn.functional as G\ndef f(x):\n    return G.softmax(x, -1)") == [
        "torch.nn.functional.softmax"]
    assert names("from torch.nn.functional import softmax as s\ndef f(x):\n    return s(x)")
    assert names("def f(x):\n    return F.softmax(x, -1)")  # F is known without an import
    assert names("def f(x):\n    return x.log_softmax(-1)") == ["?.log_softmax"]


def test_helpers_imports_and_tricks():
    assert names("import torch\ndef h(x):\n    return torch.nn.functional.softmax(x, 0)\n"
                 "def f(x):\n    return h(x) * 2")
    # a lab cell may import the reference; the import counts once the answer can use it
    assert not names("from llmcourse.reference import softmax\ndef f(x):\n    return x")
    assert names("from llmcourse.reference import softmax\ndef f(x):\n    return softmax(x)")
    assert names("from llmcourse.reference import softmax as f")
    assert names("from llmcourse.reference import *\ndef f(x):\n    return x")
    assert names("import torch\ndef f(x):\n    return getattr(torch.nn.functional, 'softmax')(x)")
    assert names("import importlib\ndef f(x):\n    m = importlib.import_module('llmcourse.reference')\n"
                 "    return m.softmax(x)")
    assert names("f = F.softmax")


def test_clean_code_and_unrelated_names_pass():
    assert names("import torch\ndef softmax(x):\n    return x\ndef f(x):\n    e = torch.exp(x)\n"
                 "    return e / e.sum(-1, keepdim=True)\n%timeit f(1)") == []
    # a helper that is never reached from the entry does not count
    assert names("def unused(x):\n    return F.softmax(x)\ndef f(x):\n    return x") == []
    assert names("this is not python (") == []
