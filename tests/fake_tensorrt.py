"""A stand-in for the `tensorrt` module that records what build_engine asks of it.

It implements the part of the TensorRT 10 Python API that build/tensorrt_engine.py calls,
with the real API's names and signatures, and checks what TensorRT itself would check: a
strongly typed network takes no precision flags, a profile must cover the input's static
dimensions, a timing cache from elsewhere is refused. The parser reads the ONNX for real
(with onnx), so the network's inputs, outputs and the types it was given are the file's.
"""

from __future__ import annotations

import enum
import types

import numpy as np


def make(version: str = "10.8.0.43") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # (what, detail) in order

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity
    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5})
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "TF32": 7, "BF16": 17})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})

    class Tensor:
        def __init__(self, name, shape=()):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs, self.outputs, self.fp16_weights = [], [], False

        strongly_typed = property(
            lambda self: bool(self.flags & (1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        )
        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            import onnx

            model = onnx.load(path)
            trt.calls.append(("parse", path))
            for inp in model.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(inp.name, dims))
            self.network.outputs = [Tensor(o.name) for o in model.graph.output]
            self.network.fp16_weights = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
            return True

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):  # noqa: A002  (TensorRT's argument names)
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return memoryview(b"TIMING" + self.blob[6:] + b"+")

    class Config:
        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32}  # on by default, as in TensorRT
            self.profiles, self.pools, self.cache = [], {}, None

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob):
            return TimingCache(bytes(blob))

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache.blob and not cache.blob.startswith(b"TIMING"):
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            trt.calls.append(("builder", None))

        def create_network(self, flags):
            trt.network = Network(flags)
            return trt.network

        def create_builder_config(self):
            trt.config = Config()
            return trt.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if network.strongly_typed and config.flags & {
                trt.BuilderFlag.FP16,
                trt.BuilderFlag.INT8,
                trt.BuilderFlag.BF16,
            }:
                raise TypeError("a strongly typed network takes no precision flags")
            ((shape_min, _, _),) = [p.shapes[n.name] for p in config.profiles for n in network.inputs]
            assert all(d > 0 for d in shape_min)
            trt.calls.append(("build", {"flags": set(config.flags), "profiles": [p.shapes for p in config.profiles]}))
            return memoryview(np.frombuffer(b"PLAN" + version.encode(), np.uint8).tobytes())

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt
