"""marsseg.edge: the light runtime (NumPy, OpenCV, LiteRT, pyserial; never TensorFlow)."""
