"""The contract's code: Python generated from ``protos/`` (``python protos/generate.py``).

Server and client both speak through these messages; neither owns them.
"""
