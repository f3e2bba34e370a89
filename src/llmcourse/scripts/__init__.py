"""Command-line scripts built on the library (nanoGPT's model / train / prepare split): they
run the references, they are not references themselves.

* ``python -m llmcourse.scripts.gpu_report --out DIR [--small]``: chapter 09's GPU report.
* ``python -m llmcourse.scripts.bpe_benchmark``: how long byte-level BPE training takes.
* ``python -m llmcourse.pretrained``: rebuild the shipped tiny GPT (see :mod:`llmcourse.pretrained`).
"""
