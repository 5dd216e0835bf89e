"""The launcher's loopback pages, which Envoy routes to: /healthcheck, /metrics, /openapi.json, /docs
and the Open Inference GET pages."""
