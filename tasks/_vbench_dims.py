"""The `vbench` aggregate's computed dimensions: each named dimension is scored on the cell's videos
by its own task (`vbench_<dimension>`), whose main metric is the raw dimension value."""

from __future__ import annotations

from harness import params, registry
from harness.errors import UserError


def compute_dimensions(ctx, dims, shared: dict[str, str]) -> list[tuple[str, float, str]]:
    """[(dimension, raw value, source label)]. `shared` (weights_dir, allow_uncalibrated, ...) goes to
    every dimension task that has such a parameter."""
    out = []
    for dim in dims:
        name = f"vbench_{dim}"
        tasks = registry.all_tasks()
        if name not in tasks:
            known = sorted(
                t[len("vbench_") :]
                for t in tasks
                if t.startswith("vbench_") and "allow_uncalibrated" in params.field_types(tasks[t])
            )
            raise UserError(f"vbench: no task {name} computes {dim!r}; computable here: {', '.join(known)}")
        cls = tasks[name]
        fields = params.field_types(cls)
        task = params.build(cls, {k: v for k, v in shared.items() if k in fields and v != ""}, name)
        result = task.run(ctx)
        calibrated = result.details.get("calibrated", True)
        backend = result.details.get("backend", "")
        label = (
            f"computed by {name}"
            + (f" ({backend})" if backend else "")
            + ("" if calibrated else " (UNCALIBRATED random-init backbone)")
        )
        out.append((dim, result.metrics[cls.main_metric].value, label))
    return out
