"""Framework-free serving code: model kinds, archive building, launcher and health.

Nothing here imports TorchServe, so a move to another server only replaces `handlers/`.
"""
