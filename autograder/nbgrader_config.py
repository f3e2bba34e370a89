"""nbgrader configuration for this course (run nbgrader commands from this folder).

The settings live in ``llmcourse.grading.course.nbgrader_config`` so that ``nbgrader ...``
here and ``llmcourse grade``/``make release`` behave identically.
"""
from pathlib import Path

from llmcourse.grading.course import nbgrader_config

c = get_config()  # noqa: F821  (provided by nbgrader)
c.merge(nbgrader_config(Path(__file__).resolve().parent.parent))
