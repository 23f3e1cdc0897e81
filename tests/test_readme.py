"""The README's Python is runnable as it stands: its blocks run in a fresh folder, in order."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks(path):
    with open(path, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_the_readmes_python_runs_and_every_docs_page_it_links_exists(tmp_path, monkeypatch):
    readme = os.path.join(ROOT, "README.md")
    links = re.findall(r"\]\(((?:docs|export)/[^)#]+)", open(readme, encoding="utf-8").read())
    assert {"docs/models.md", "docs/heads.md", "docs/density.md", "docs/speed.md", "docs/cli.md", "docs/distributed.md",
            "docs/deployment.md"} <= set(links)
    for link in links:
        assert os.path.isfile(os.path.join(ROOT, link)), link
    blocks = python_blocks(readme)
    assert blocks, "the README shows Python"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, readme, "exec"), namespace)
    assert namespace["model"].latent_dim == 8 and (tmp_path / "digits.keras").exists()
