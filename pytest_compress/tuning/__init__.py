"""Tuning: trials, search grids, search, layer sensitivity, keep-float and recovery.

Built on the engine and the file format; never imports pytest.
"""
