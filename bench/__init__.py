"""The benchmark: cachepi against nginx, proxpi and bare aiohttp on 127.0.0.1.

A package, run from the repository root as `python -m bench.run` (`python bench/run.py`
re-runs itself that way), so that its modules import each other and the tests' helpers
(`tests.fakeupstream`, `tests.clients`, `tests.served`, `tests.cluster`, `tests.system`) as
packages. It needs the project's virtualenv with the test extra (`pip install -e '.[test]'`).
"""
