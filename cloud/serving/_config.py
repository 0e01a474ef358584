"""How one algorithm version is served: batching, autoscaling, resources."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServingConfig(BaseModel):
    """Settings of one Ray Serve deployment of an algorithm version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(
        default=16, ge=1, le=1024, description="most images one model call takes (@serve.batch)"
    )
    batch_wait_timeout_s: float = Field(
        default=0.005,
        ge=0,
        le=10,
        description="how long a replica waits to fill a batch before running a partial one",
    )
    min_replicas: int = Field(default=1, ge=0, description="autoscaling floor (0 = scale to zero)")
    max_replicas: int = Field(default=1, ge=1, description="autoscaling ceiling")
    initial_replicas: int | None = Field(
        default=None, ge=0, description="replicas at deploy time (default min_replicas)"
    )
    target_ongoing_requests: float = Field(
        default=32.0,
        gt=0,
        description="queued + running requests per replica the autoscaler aims for",
    )
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        description="requests a replica accepts at once (default 4 x max_batch_size)",
    )
    num_cpus: float = Field(default=1.0, gt=0, description="CPUs reserved per replica")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs reserved per replica")
    intra_op_threads: int = Field(
        default=1, ge=1, le=256, description="ONNX Runtime intra-op threads per replica"
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference",
    )
    color_order: str = Field(
        default="BGR", pattern="^(BGR|RGB)$", description="channel order of incoming uint8 images"
    )

    @model_validator(mode="after")
    def _bounds(self) -> ServingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})"
            )
        init = self.initial_replicas
        if init is not None and not self.min_replicas <= init <= self.max_replicas:
            raise ValueError(f"initial_replicas {init} outside [min_replicas, max_replicas]")
        if (
            self.max_ongoing_requests is not None
            and self.max_ongoing_requests < self.max_batch_size
        ):
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) < max_batch_size "
                f"({self.max_batch_size}): batches could never fill"
            )
        return self

    def autoscaling_config(self) -> dict[str, Any]:
        """Ray Serve ``autoscaling_config``."""
        out: dict[str, Any] = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }
        if self.initial_replicas is not None:
            out["initial_replicas"] = self.initial_replicas
        return out

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        return {
            "autoscaling_config": self.autoscaling_config(),
            "max_ongoing_requests": self.max_ongoing_requests or 4 * self.max_batch_size,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
