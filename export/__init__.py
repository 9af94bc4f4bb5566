"""marsseg.export: calibration set, int8 TFLite conversion, op report and accuracy gate (TensorFlow)."""
