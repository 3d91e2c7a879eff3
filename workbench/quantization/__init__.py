"""What to quantize and how: the recipe, editing it node by node, the recipe quantizer and
torchao's pattern cache.
"""
