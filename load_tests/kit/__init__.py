"""What the load tools and the tests share: the stack launcher (`stack`), the public routes'
sample requests and answer checks (`routes`), one keep-alive HTTP client (`http`), one
percentile (`stats`), and the tiny local models and corpus (`tiny_models`, `topics_corpus`).

It lives here, under `load_tests`, so that the dependency runs one way: `tests` imports
`load_tests` (the kit and the tools it tests), and nothing in `load_tests` imports `tests`.
"""
