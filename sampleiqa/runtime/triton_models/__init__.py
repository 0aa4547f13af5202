"""The Triton python-backend models of every target, one module each:

    preprocess        IMAGE bytes -> PIXELS, FACE_BOX, FACE_FOUND with OpenCV on CPU
    scorer_onnx       PIXELS -> SCORE with ONNX Runtime on CPU (the cpu target's scorer)
    preprocess_torch  the same as preprocess, in PyTorch on the instance's device (gpu targets)
    scorer_torch      PIXELS -> SCORE in PyTorch (the gpu-torch target's scorer)

Each keeps the python backend's shape: a `TritonPythonModel` with initialize, execute and
finalize; execute takes every item of every request as one batch and splits the results
back per request. A repository's model.py is not one of these files: build-repository writes
it (build/repository.py) as the bootstrap (the launcher's site dirs, else the vendored copy
beside it) and one import of the class from here, which Triton's python backend looks up by
name.
"""
