"""Benchmarks of the GPU worker: the tiny model on a CPU (``cpu_tiny``, runs anywhere with the
gpu extra), and Wan 2.1 VACE 1.3B at 480p on a CUDA GPU (``gpu_wan13b``, needs one)."""
