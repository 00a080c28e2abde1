"""The optimize stage: ONNX conversion, ONNX Runtime variants, equivalence gate, selection."""
