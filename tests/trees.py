"""Elements as comparable data, for tests and fuzzers that compare what was parsed with what left."""

from __future__ import annotations


def tree(element) -> tuple:
    """An element as comparable data: namespace, name, attributes and children with adjacent text merged, empty text dropped."""
    children: list = []
    for child in element.children:
        if isinstance(child, str):
            if not child:
                continue
            if children and isinstance(children[-1], str):
                children[-1] += child
            else:
                children.append(child)
        else:
            children.append(tree(child))
    return (element.uri, element.name, dict(element.attributes), children)
