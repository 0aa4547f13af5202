"""What runs inside Triton: the wire contract, the environment's names, the crop credits,
the preprocessing, the python-backend scorers' batching and the ONNX Runtime session.

It imports nothing else from the project (tests/test_architecture.py), so a repository can
carry a copy of it beside its python models (build/repository.py vendors exactly this folder).
"""
