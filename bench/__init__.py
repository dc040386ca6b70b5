"""kreabot's benchmark: the real bot, in its own process, against the two fakes.

Run it with ``python -m bench.run`` (see ``bench/README.md``); it is not part of the tests.
"""
