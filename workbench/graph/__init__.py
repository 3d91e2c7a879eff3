"""UI-free descriptions of FX graphs: the node view the pages draw and the provenance that
follows a node across stages.
"""
