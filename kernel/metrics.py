"""Prometheus metrics of one kernel: requests and latency per route, inference latency
per model, loaded models. Each kernel has its own registry, so several kernels in one
process (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kernel_http_requests", "HTTP requests handled",
            ["plugin", "method", "route", "status"], registry=self.registry,
        )
        self.request_seconds = Histogram(
            "kernel_http_request_duration_seconds", "HTTP request latency",
            ["plugin", "method", "route"], registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "kernel_inference_duration_seconds", "Model inference latency (queue and run)",
            ["model"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.models_loaded = Gauge(
            "kernel_models_loaded", "Models loaded and ready", registry=self.registry
        )
        self.inference_pending = Gauge(
            "kernel_inference_pending", "Inference calls running or queued", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
