"""The PT2E flow as immutable stages: exported -> prepared -> calibrated/trained -> converted,
training, range recording, cost estimates.
"""
