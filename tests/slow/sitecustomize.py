"""The engine made F times slower, to check that no test depends on how fast it is.

    RNNLM_TEST_SLOWDOWN=10 PYTHONPATH=$PWD/tests/slow taskset -c 0 .venv/bin/pytest -q tests/app

(best with a CPU hog on the same core: `taskset -c 0 sh -c 'while :; do :; done' &`, killed
afterwards). Python imports this file at startup in every process whose PYTHONPATH names
this folder: pytest, and the servers and CLIs the tests start, which inherit it.

With RNNLM_TEST_SLOWDOWN=F (a number >= 1) each decoding step and prefill
(`models.batch.Batch.step`, `Batch.add`) and each scoring pass (`models.engine.Engine._score`,
under score_batch, score_token_ids and the others) sleeps F-1 times its own duration after
it ran. The patch is made when those modules are first imported (an import hook), so a
process that never imports them pays nothing. Without the variable this file does nothing.
"""

import os

if os.environ.get("RNNLM_TEST_SLOWDOWN", "").strip():
    import rnnlm_slowdown  # beside this file; nothing else is imported without the variable

    rnnlm_slowdown.install(os.environ["RNNLM_TEST_SLOWDOWN"])
