"""What the load tools and the tests share: the stack launcher (`stack`), the public routes'
sample requests and answer checks (`routes`), one keep-alive HTTP client (`http`), one
percentile (`stats`), and the tiny topics corpus (`topics_corpus`); the tiny text checkpoints are
`modelserver/tools/tiny_models.py` (`python -m modelserver tiny-models`).

It lives here, under `load_tests`, so that the dependency runs one way: `tests` imports
`load_tests` (the kit and the tools it tests), and nothing in `load_tests` imports `tests`.
"""
