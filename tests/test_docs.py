"""The documents' references resolve: links between them, and code pointing into them."""
import re

import pytest

from conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(path):
    """GitHub's anchors for the headings of a Markdown file."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_and_pictures_resolve(document):
    for target in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", document.read_text()):
        path, anchor = target
        if path.startswith(("http://", "https://")):
            continue
        linked = (document.parent / path) if path else document
        assert linked.exists(), (document.name, path)
        if anchor:
            assert anchor in anchors(linked), (document.name, path, anchor)


def test_docstrings_point_to_headings_that_exist():
    references = [(source.name, doc, heading) for source in ROOT.glob("*.py")
                  for doc, heading in re.findall(r"(docs/\w+\.md), \"([^\"]+)\"",
                                                 source.read_text())]
    assert len(references) >= 3
    for source, doc, heading in references:
        assert heading.lower().replace(" ", "-") in anchors(ROOT / doc), (source, doc, heading)
