"""Turning descriptions into pictures: DOT/SVG of graphs and diffs, overlays and their colours,
plotly charts, the view cache.
"""
