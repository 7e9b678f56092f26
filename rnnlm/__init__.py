"""rnnlm: train character, word and subword RNN language models on your own text, score
sentences with them in KenLM's shape, and serve them over HTTP.

    import rnnlm
    lm = rnnlm.load("checkpoints/demo")
    lm.score("the cat sat on the mat")   # log10 P, with <s> and </s> as KenLM

`load` and `LanguageModel` (rnnlm/lm.py) are imported when first used, so the CLI's
sub-commands that never score pay nothing for them. docs/python.md has the whole API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rnnlm.lm import Adaptation, CheckpointError, FullScoreReturn, LanguageModel, State, load

__all__ = ["Adaptation", "CheckpointError", "FullScoreReturn", "LanguageModel", "State", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rnnlm import lm

        return getattr(lm, name)
    raise AttributeError(f"module 'rnnlm' has no attribute {name!r}")
