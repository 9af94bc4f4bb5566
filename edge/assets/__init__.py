"""Package data: the bundled default int8 model, its metadata and the demo clip."""
