"""Benchmarks of the GPU worker: the tiny model on a CPU (``cpu_tiny``, runs anywhere with the
gpu extra), and Wan 2.1 VACE 1.3B or 14B on a CUDA GPU with random weights or weights on disk
(``gpu_wan``, downloads nothing)."""
