"""marsseg.train: data, dual U-Net, losses and the training CLI (TensorFlow/Keras; GPU when present)."""
