"""The public wire protocols besides the routes' own JSON: the Open Inference Protocol (v2)."""
