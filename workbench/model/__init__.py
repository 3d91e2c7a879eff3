"""What the user brings: where a model comes from (`sources`), its capture with torch.export
(`capture`, reading the program with `program`), and its input and output `signature`.
"""

__all__: list[str] = []
