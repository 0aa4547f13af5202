"""Triton's model statistics over gRPC: the batch sizes a model really executed."""

from __future__ import annotations

from collections import Counter


def batch_executions(client, model: str) -> Counter:
    """{batch size: executions so far} from get_inference_statistics (tritonclient.grpc)."""
    stats = client.get_inference_statistics(model_name=model, as_json=True)
    counts: Counter = Counter()
    for model_stats in stats.get("model_stats", []):
        for b in model_stats.get("batch_stats", []):
            counts[int(b["batch_size"])] += int(b.get("compute_infer", {}).get("count", 0))
    return counts


def executed_between(before: Counter, after: Counter) -> dict[int, int]:
    return {size: n for size, n in sorted((after - before).items()) if n > 0}


def mean_batch(executions: dict[int, int]) -> float:
    runs = sum(executions.values())
    return sum(size * n for size, n in executions.items()) / runs if runs else 0.0


def inference_count(client, model: str) -> int:
    stats = client.get_inference_statistics(model_name=model, as_json=True)
    return sum(int(m.get("inference_count", 0)) for m in stats.get("model_stats", []))
