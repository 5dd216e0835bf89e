"""`make bench`: our stack against naive peers on the same weights, through the same client.

Modules: `scenarios` (requests and answer checks), `drive` (one locust run in its own process),
`servers` (start/stop our stack and the peers), `raw` (the model call with no server),
`report` (JSON, Markdown, PNG), `__main__` (the whole run).
"""
