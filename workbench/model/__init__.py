"""What the user brings: a model spec resolved and captured with torch.export, its input and
output signature.
"""
