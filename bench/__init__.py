"""unetkit.bench: `unet-bench`, the latency report against PyTorch eager, the target and the hardware."""
