"""The file format: ``save_compressed`` / ``load_compressed`` and the byte-level encodings.

Built on the engine; never imports pytest.
"""
