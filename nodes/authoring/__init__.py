"""Generators of the pack's help pages, locales, example workflows and sample images (authoring
tools: the nodes never import them at run time)."""
