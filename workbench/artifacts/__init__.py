"""What the workbench writes: the exported .pt2 and its reload check, the report, the workspace
folder.
"""
