"""Headers the worker and Envoy agree on.

Every response the handler makes (an answer, a per-request error, a stream's first chunk)
carries `HANDLER_ANSWER`. A reply without it was made by TorchServe itself: the worker holding
the batch died or was removed ("Worker died.", 500), ran out of memory (507), or the request
never reached a worker. Only those are worth a second try; a model's own 500 is its answer.
Envoy retries on the header's absence and removes it before the client sees the response.
"""

HANDLER_ANSWER = "x-handler-answer"

# The version of a model that answered (on every answer a model's route gives), and the one a
# client asks for (a request header pinning it): the catalogue's `version` of the model or of
# its candidate.
VERSION_HEADER = "x-model-version"
