"""The model server: model kinds, the batch logic that serves them, archive building, the
launcher (TorchServe's and Envoy's processes and configs) and its pages.

Model code (`kinds/`, `backends/`) and the batch logic (`serving/batch.py`) import nothing of
TorchServe. What speaks to it: `handlers/` (the entry point it loads), `serving/` around the
batch logic (its handler API, its metrics, its worker socket) and the launcher's TorchServe
parts; another server would replace those.
"""
