"""Python side of scripts/gpu-check: the model writer, the diffusers benchmark, the GPU
memory poller, image comparison and the summary table. Run as `python -m gpu_check.NAME`
with scripts/ on PYTHONPATH (scripts/gpu-check does that). Standard library only at import
time, so the summary still runs where torch or diffusers failed to import."""
