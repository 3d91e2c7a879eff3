"""UI-free descriptions of FX graphs: what a node is (`nodes`), where it came from across
stages (`provenance`) and the node view the pages draw (`view`).
"""
