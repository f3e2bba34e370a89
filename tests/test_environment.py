"""environment.yml (conda users) lists exactly the dependencies of pyproject.toml."""

import re
import tomllib

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
