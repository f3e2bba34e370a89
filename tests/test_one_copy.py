"""One copy of the code the book shows (d2l's rule): the helper cells of the instructor
notebooks (cells that are neither answers nor tests) do not re-define a function or class of
``llmcourse.reference``; they import it (as ``lab_...`` where a learner's answer could pick the
name up), or a test here pins the cell's code to the library's.

A helper definition counts as a copy when it has the name of a reference function or class
and its code (docstrings, comments and decorators aside) is at least 60% the same."""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import json
import pkgutil
import re
import textwrap

from conftest import ROOT, nbgrader_meta

SIMILAR = 0.6

# Cells whose code IS the library's (compared below, comments and docstrings aside).
EQUAL_TO_LIBRARY = {
    ("02-attention/transformer.ipynb", "GPTConfig"): "llmcourse.reference.gpt",
    ("10-frontiers/decoding.ipynb", "encode"): "llmcourse.reference.training",
    ("10-frontiers/decoding.ipynb", "decode"): "llmcourse.reference.training",
    # the learner's per_example_grads calls mlp_loss: a name from the reference would be
    # refused in the answer, so the page defines it, pinned here to the library's
    ("10-frontiers/privacy.ipynb", "mlp_logits"): "llmcourse.reference.privacy",
    ("10-frontiers/privacy.ipynb", "mlp_loss"): "llmcourse.reference.privacy",
}
# (notebook, name) -> why this definition looks like the reference's but is other code.
NOT_COPIES = {
    ("01-language-models/ngram_lm.ipynb", "encode"): "character ids of the n-gram alphabet, not bytes",
    ("01-language-models/ngram_lm.ipynb", "decode"): "character ids of the n-gram alphabet, not bytes",
    ("01-language-models/ngram_lm.ipynb", "MLPLanguageModel"): "wraps the learner's mlp_lm_forward",
    ("01-language-models/bpe.ipynb", "pretokenize"): "the book shows the split; "
                                                    "test_pretokenize_cell_is_the_reference pins it",
    ("05-fine-tuning/classification.ipynb", "GPTClassifier"): "built on the learner's ClassificationHead",
    ("10-frontiers/data_quality.ipynb", "shingles"): "the page shows normalise inline; "
                                                     "test_shingle_cells_behave_like_the_library pins it",
    ("10-frontiers/data_quality.ipynb", "shingle_hashes"): "the page shows sha1_hash32 inline; "
                                                           "test_shingle_cells_behave_like_the_library pins it",
    ("10-frontiers/data_quality.ipynb", "permutations"): "the page shows how the hash parameters "
                                                         "are drawn; the same test pins the draws",
    ("10-frontiers/privacy.ipynb", "init_mlp"): "float32 draws for the page's classifier; the "
                                                "library draws in float64 for its Opacus checks",
}
# Copies in chapters still being written, left to their authors; delete an entry when its
# cell imports the library (none left).
KNOWN_COPIES: set[tuple[str, str]] = set()


def _code(source: str) -> str:
    """``source`` without docstrings, comments, decorators and type annotations (ast round
    trip)."""
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            node.annotation = None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            node.decorator_list = []
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def reference_sources() -> dict[str, dict[str, str]]:
    """name -> {module: source} for every function and class of llmcourse.reference."""
    import llmcourse.reference as reference

    out: dict[str, dict[str, str]] = {}
    for info in pkgutil.iter_modules(reference.__path__):
        try:
            module = importlib.import_module(f"llmcourse.reference.{info.name}")
        except Exception:  # an optional dependency (triton) missing: nothing to compare with
            continue
        for name, value in vars(module).items():
            if callable(value) and getattr(value, "__module__", None) == module.__name__:
                try:
                    out.setdefault(name, {})[module.__name__] = inspect.getsource(value)
                except (OSError, TypeError):
                    pass
    return out


def helper_definitions():
    """(notebook, name, source) of every top-level def/class in a helper cell."""
    for path in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            meta = nbgrader_meta(cell)
            if cell["cell_type"] != "code" or meta.get("solution") or meta.get("grade"):
                continue
            src = "".join(cell["source"])
            src = "\n".join("" if l.lstrip().startswith(("%", "!")) else l for l in src.splitlines())
            for node in ast.parse(src).body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    yield f"{path.parent.name}/{path.name}", node.name, ast.get_source_segment(src, node)


def test_helper_cells_import_the_reference_instead_of_copying_it():
    refs = reference_sources()
    skip = set(EQUAL_TO_LIBRARY) | set(NOT_COPIES) | KNOWN_COPIES
    copies = []
    for nb, name, src in helper_definitions():
        if name in refs and (nb, name) not in skip:
            ratio = max(difflib.SequenceMatcher(None, _code(src), _code(ref)).ratio()
                        for ref in refs[name].values())
            if ratio >= SIMILAR:
                copies.append((nb, name, round(ratio, 2)))
    assert not copies, ("helper cells re-define reference code; import it from the library "
                        f"(or say why it differs in NOT_COPIES): {copies}")


def test_the_listed_exceptions_still_exist():
    found = {(nb, name) for nb, name, _ in helper_definitions()}
    stale = (set(EQUAL_TO_LIBRARY) | set(NOT_COPIES) | KNOWN_COPIES) - found
    assert not stale, f"stale entries: {stale}"


def test_cells_equal_to_the_library_are_equal():
    refs = reference_sources()
    cells = {(nb, name): src for nb, name, src in helper_definitions()}
    for (nb, name), module in EQUAL_TO_LIBRARY.items():
        assert _code(cells[nb, name]) == _code(refs[name][module]), f"{nb}: {name} != {module}.{name}"


def test_pretokenize_cell_is_the_reference():
    """bpe.ipynb shows the GPT-2 pre-tokenizer: the same pattern, the same chunks."""
    from llmcourse.reference import bpe

    path = ROOT / "solutions" / "01-language-models" / "bpe.ipynb"
    (cell,) = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
               if "def pretokenize(" in "".join(c["source"])]
    tree = ast.parse("".join(cell["source"]))
    (pattern,) = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", "") == "PATTERN"]
    assert pattern == bpe.PATTERN
    ns = {"re": re}
    exec(compile(ast.Module([n for n in tree.body if isinstance(n, (ast.Assign, ast.FunctionDef))],
                            []), "bpe.ipynb", "exec"), ns)
    for text in ["Once upon a time, there was a cat named Tom.", "def f(x_1):\n    return x_1  # it's",
                 "我爱自然语言处理。", "emoji: 😀👍🏽 café", "  spaces  \n\n tabs\t"]:
        assert ns["pretokenize"](text) == bpe.pretokenize(text)


def test_shingle_cells_behave_like_the_library():
    """data_quality.ipynb spells out the shingles and their hashes: the same sets, the same
    hashes as llmcourse.reference.dedup on messy text."""
    import hashlib
    import struct

    import torch

    from llmcourse.reference import dedup

    path = ROOT / "solutions" / "10-frontiers" / "data_quality.ipynb"
    (cell,) = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
               if "def shingle_hashes(" in "".join(c["source"])]
    tree = ast.parse("".join(cell["source"]))
    ns = {"torch": torch, "hashlib": hashlib, "struct": struct}
    exec(compile(ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef)], []),
                 "data_quality.ipynb", "exec"), ns)
    for text in ["Once upon a time, there was a cat named Tom.", "  The END.\n\nthe  end. ",
                 "Math: 12 + 7 = 19.", "a b", "Café  CAFÉ\tcafé naïve"]:
        assert ns["shingles"](text) == dedup.shingles(text)
        assert torch.equal(ns["shingle_hashes"](text), dedup.shingle_hashes(text))
    for k, seed in ((16, 1), (256, 7)):
        assert all(torch.equal(x, y) for x, y in zip(ns["permutations"](k, seed), dedup.permutations(k, seed)))
