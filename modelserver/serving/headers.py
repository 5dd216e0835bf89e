"""Headers the worker and Envoy agree on.

Every response the handler makes (an answer, a per-request error, a stream's first chunk)
carries `HANDLER_ANSWER`. A reply without it was made by TorchServe itself: the worker holding
the batch died or was removed ("Worker died.", 500), ran out of memory (507), or the request
never reached a worker. Only those are worth a second try; a model's own 500 is its answer.
Envoy retries on the header's absence and removes it before the client sees the response.
"""

HANDLER_ANSWER = "x-handler-answer"
