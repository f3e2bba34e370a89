"""environment.yml (conda users) lists exactly the dependencies of pyproject.toml."""

import os
import re
import tomllib

import pytest

from conftest import ROOT


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {r for r in project["dependencies"]}
    for group in project["optional-dependencies"].values():
        wanted |= {r for r in group if not r.startswith("llmcourse")}
    lines = (ROOT / "environment.yml").read_text().splitlines()
    pip = [ln.strip()[2:].strip() for ln in lines[lines.index("  - pip:") + 1:] if ln.strip().startswith("- ")]
    listed = {r for r in pip if not r.startswith("-e")}
    assert {r.replace(" ", "") for r in listed} == {r.replace(" ", "") for r in wanted}
    assert "-e ." in pip  # the course library itself


def test_ci_calls_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme


@pytest.mark.xdist_group("environment")
def test_xdist_groups_hold(request):
    """Under `--dist loadgroup` a grouped test's id carries its group, which is how the
    scheduler keeps a group on one worker (the book is built once, a chapter graded once).
    pytest 9.2 broke this silently with pytest-xdist 3.8: every group was split."""
    if os.environ.get("PYTEST_XDIST_WORKER") and request.config.getvalue("loadgroup"):
        assert request.node.nodeid.endswith("@environment"), request.node.nodeid


def test_grader_skips_the_slow_iri_grammar_and_nbformat_still_validates():
    """llmcourse.grading stops jsonschema from building rfc3987_syntax's grammar (1.7 s per
    grader process); nbformat must still reject a malformed notebook."""
    import subprocess
    import sys

    code = ("import time, sys; t = time.perf_counter(); import llmcourse.grading.runner; "
            "import nbformat; nbformat.validate(nbformat.v4.new_notebook())\n"
            "try:\n    nbformat.validate({'cells': 3, 'nbformat': 4})\nexcept nbformat.ValidationError:\n"
            "    print('rejected')\nprint(sys.modules.get('rfc3987_syntax', 'absent'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["rejected", "None"]
