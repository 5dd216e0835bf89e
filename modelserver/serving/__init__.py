"""Server-side glue that is not tied to one model kind: batching and the TorchServe adapter."""
