"""The contract every stage shares (training, export, the edge runtime and its tools): classes, tile geometry,
preprocessing, metrics, the model's metadata file and interpreter adapter, frames files, tiling, camera
degradations and atomic writes. Needs only NumPy and OpenCV (LiteRT only when a model is loaded)."""
