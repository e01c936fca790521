"""Prefect orchestration over the DVC pipeline: dvc.yaml stays the only DAG, Prefect adds
retries, GPU slots, the registry step, reports and schedules."""
