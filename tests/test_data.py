"""llmcourse.data: the synthetic language (determinism, exact log-probabilities, entropy
floor), the standard-library code corpus and the offline-safe public loaders."""

import hashlib
import math
import subprocess
import sys
import urllib.request

import pytest
import torch

from llmcourse.data import code, public, synthetic
from llmcourse.data.synthetic import Language, corpus, document_log_prob, documents, log_prob
from llmcourse.reference import ngram

# Recorded once; a change here means the corpus changed for every learner.
CORPUS_SHA256 = "c91d1bfc5a856f25532c4cdaca94ff6b2cd44e951f5e60cce49fe95ed4143c31"
TINY = Language.tiny()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download something")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# -- the synthetic language ----------------------------------------------------------------

def test_same_seed_same_bytes_recorded_hash():
    text = corpus(20_000, seed=0)
    assert len(text) >= 20_000 and text.endswith("\n") and text.isascii()
    assert hashlib.sha256(text.encode()).hexdigest() == CORPUS_SHA256
    assert corpus(20_000, seed=0) == text
    assert corpus(20_000, seed=1) != text


def test_same_bytes_in_a_fresh_interpreter_with_another_hash_seed():
    code_ = ("import hashlib; from llmcourse.data import corpus; "
             "print(hashlib.sha256(corpus(20_000, seed=0).encode()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code_], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}, timeout=60, check=True)
    assert out.stdout.strip() == CORPUS_SHA256


def test_documents_are_a_prefix_stream_and_cover_every_domain():
    docs = documents(300, seed=3)
    assert docs[:40] == documents(40, seed=3)
    assert all(d.endswith("\n") and d.count("\n") == 1 for d in docs)
    assert {synthetic.domain_of(d) for d in docs} == {"story", "math", "review"}


def test_sampled_log_prob_equals_the_log_prob_read_off_the_text():
    for text, logp in synthetic.sample_documents(600, seed=11):
        assert document_log_prob(text) == pytest.approx(logp, abs=1e-9)
        assert logp < 0
    docs = documents(20, seed=4)
    assert log_prob("".join(docs)) == pytest.approx(sum(document_log_prob(d) for d in docs))


def test_tiny_language_probabilities_sum_to_one_and_texts_are_unambiguous():
    enumerated = list(synthetic.enumerate_documents(TINY))
    texts = [t for t, _ in enumerated]
    assert len(set(texts)) == len(texts)  # no two derivations share a text
    assert math.fsum(math.exp(lp) for _, lp in enumerated) == pytest.approx(1.0, abs=1e-12)
    for text, logp in enumerated[::5]:
        assert document_log_prob(text, TINY) == pytest.approx(logp, abs=1e-12)


def test_entropy_floor_estimate_matches_the_exact_rate_of_the_tiny_language():
    exact, total = synthetic.exact_entropy_rate(TINY)
    assert total == pytest.approx(1.0, abs=1e-12)
    est = synthetic.entropy_floor(n_docs=3000, seed=5, language=TINY)
    assert abs(est.nats_per_char - exact) < 4 * est.stderr_per_char


def test_entropy_floor_of_the_course_language():
    floor = synthetic.entropy_floor(n_docs=1500)
    assert 0.1 < floor.nats_per_char < 0.4  # far below log(#characters) ~ 3.8
    assert 0 < floor.stderr_per_char < 0.01
    assert floor.nats_per_byte == floor.nats_per_char  # ASCII: a character is a byte
    assert floor.bits_per_char == pytest.approx(floor.nats_per_char / math.log(2))
    assert floor.nats_per_token(4.0) == pytest.approx(4 * floor.nats_per_char)


def test_no_model_beats_the_floor():
    """A character trigram model's held-out cross-entropy (nats/char) is above the floor."""
    train, test = corpus(60_000, seed=0), corpus(20_000, seed=2)
    alphabet = sorted(set(train + test))
    ids = {ch: i for i, ch in enumerate(alphabet)}
    probs = ngram.kneser_ney_probs(ngram.ngram_counts(torch.tensor([ids[c] for c in train]), 3, len(alphabet)))
    model = math.log(ngram.perplexity(probs, torch.tensor([ids[c] for c in test])).item())
    floor = synthetic.entropy_floor(n_docs=1500)
    assert floor.nats_per_char < model < math.log(len(alphabet))


@pytest.mark.parametrize("text", [
    "Math: 1 + 1 = 3.\n",  # wrong sum
    "Review: The food was good. Rating: 5 stars.\n",  # the rating is +1 -> 4 stars
    "Review: The food was good, but the service was awful. Rating: 4 stars.\n",  # "but": 1 star
    "Math:  1 + 1 = 2.\n",  # two spaces
    "Once upon a time, there was a cat named Tom. Then Tom felt happy. The end.",  # no newline end
    "Hello world.\n",
])
def test_text_outside_the_language_has_probability_zero(text):
    if not text.endswith("\n"):
        with pytest.raises(ValueError, match="whole documents"):
            log_prob(text)
        assert document_log_prob(text) == -math.inf
    else:
        assert log_prob(text) == -math.inf


@pytest.mark.parametrize("review, stars", [
    ("The food was good.", 4), ("The food was not good.", 2), ("The food was not bad.", 4),
    ("The food was very great.", 5), ("The food was very bad.", 1),
    ("The food was great, but the soup was bland.", 2),
    ("The food was good, and the soup was good.", 5),
    ("The food was bad. The soup was not awful.", 3),
])
def test_ratings_follow_the_compositional_sentiment(review, stars):
    unit = "star" if stars == 1 else "stars"
    good = f"Review: {review} Rating: {stars} {unit}.\n"
    assert math.isfinite(log_prob(good))
    for other in {1, 2, 3, 4, 5} - {stars}:
        unit = "star" if other == 1 else "stars"
        assert log_prob(f"Review: {review} Rating: {other} {unit}.\n") == -math.inf


def test_one_domain_only():
    docs = documents(50, seed=0, language=Language(domain_weights=(0, 1, 0)))
    assert all(d.startswith("Math: ") for d in docs)
    assert document_log_prob(docs[0], Language(domain_weights=(0, 1, 0))) > document_log_prob(docs[0])


# -- Python standard-library source --------------------------------------------------------

def test_stdlib_corpus_is_deterministic_sized_and_real_python():
    text = code.python_stdlib(max_bytes=200_000)
    assert text == code.python_stdlib(max_bytes=200_000)
    assert 190_000 < len(text.encode("utf-8")) <= 200_000
    assert text.startswith("# ---- ") and "def " in text and text.endswith("\n")
    assert code.python_stdlib(max_bytes=50_000, seed=1) != text[:50_000]
    files = code.stdlib_files()
    assert "json/decoder.py" in files and files == sorted(files)
    assert not any(part in {"site-packages", "test", "tests"} for f in files for part in f.split("/"))


def test_stdlib_reader_on_a_fixture_tree(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "a.py").write_text("x = 1\r\ny = 2\r\n", newline="")
    (tmp_path / "pkg" / "b.py").write_bytes("# -*- coding: latin-1 -*-\ns = 'café'\n".encode("latin-1"))
    (tmp_path / "test" / "t.py").write_text("assert True\n")
    (tmp_path / "site-packages" / "c.py").write_text("import torch\n")
    assert code.stdlib_files(root=tmp_path) == ["a.py", "pkg/b.py"]
    assert code.stdlib_files(include_tests=True, root=tmp_path) == ["a.py", "pkg/b.py", "test/t.py"]
    full = code.python_stdlib(10_000, root=tmp_path)
    assert "x = 1\ny = 2\n" in full and "s = 'café'" in full and "\r" not in full
    assert full.count("# ---- ") == 2
    limit = 30
    cut = code.python_stdlib(limit, root=tmp_path)
    assert 0 < len(cut.encode()) <= limit and cut.endswith("\n") and full.startswith(cut)


# -- optional public corpora (never downloaded here) ----------------------------------------

SHAKESPEARE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
               "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die"
               " than to famish?\n\nno speaker here\n")


def test_tiny_shakespeare_from_a_local_file(tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_text(SHAKESPEARE.replace("\n", "\r\n"), newline="")
    text = public.tiny_shakespeare(root=tmp_path)
    assert text == SHAKESPEARE
    speeches = public.parse_shakespeare(text)
    assert speeches[:2] == [("First Citizen", "Before we proceed any further, hear me speak."),
                            ("All", "Speak, speak.")]
    assert len(speeches) == 3


def test_tinystories_parser_and_loader(tmp_path):
    raw = ("Once upon a time, there was a cat.\nIt was happy.\n<|endoftext|>\n"
           "Tom had a ball.<|endoftext|>\n\n<|endoftext|>\nThe end story.\n")
    stories = ["Once upon a time, there was a cat.\nIt was happy.", "Tom had a ball.", "The end story."]
    assert public.parse_tinystories(raw) == stories
    assert public.parse_tinystories(raw, max_stories=2) == stories[:2]
    (tmp_path / "TinyStoriesV2-GPT4-valid.txt").write_text(raw.replace("\n", "\r\n"), newline="")
    assert public.tinystories("valid", root=tmp_path) == stories
    assert public.tinystories("valid", root=tmp_path, max_stories=1) == stories[:1]
    with pytest.raises(ValueError, match="split"):
        public.tinystories("test", root=tmp_path)


def test_missing_corpus_without_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOURSE_DATA", str(tmp_path))
    with pytest.raises(public.DatasetNotAvailable, match="download=True"):
        public.tiny_shakespeare()
    with pytest.raises(FileNotFoundError, match="TinyStoriesV2-GPT4-train.txt"):
        public.tinystories("train", root=tmp_path / "elsewhere")
    assert not list(tmp_path.iterdir())  # nothing written
