"""unetkit.export: ONNX (FP32, FP16) and FP16 TensorRT engines, each verified against PyTorch."""
