"""What runs inside Triton: the wire contract, the environment's names, the crop credits,
the preprocessing, the python-backend scorers' batching, the ONNX Runtime session, and the
python-backend models of every target (triton_models/).

It imports nothing else from the project (tests/test_architecture.py; the one exception, the
gpu-torch scorer's runner in build/, is declared there), so a repository can carry a copy of
it beside its python models (build/repository.py vendors exactly this folder).
"""
