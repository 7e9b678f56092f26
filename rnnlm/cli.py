"""`rnnlm`: the one command. Argument parsing and one call per sub-command.

Each sub-command imports its code lazily, so `rnnlm score` never pays for
FastAPI and `rnnlm serve` never pays for matplotlib. Every error a user can
cause ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(lo: int) -> type[int]:
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {v}")
        return v

    return parse  # type: ignore[return-value]


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _float_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> type[float]:
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not (lo < v if lo_open else lo <= v) or not (v < hi if hi_open else v <= hi):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(f"must be in {left}{lo}, {hi}{right}, got {v}")
        return v

    return parse  # type: ignore[return-value]


def _add_corpus(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("corpus", help="tokenise text files into a training corpus")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="UTF-8 text files")
    p.add_argument("--out", required=True, help="corpus directory to write")
    p.add_argument("--tokenizer", choices=["char", "word", "sentencepiece"], default="char")
    p.add_argument(
        "--vocab-size",
        type=_positive_int,
        default=None,
        help="vocabulary cap (word default 10000, sentencepiece 8000, char none)",
    )
    p.add_argument(
        "--min-freq",
        type=_positive_int,
        default=None,
        help="keep tokens seen at least this often (char default 2, word 1)",
    )
    p.add_argument("--lowercase", action="store_true", help="fold case (word level)")
    p.add_argument(
        "--pretokenized",
        action="store_true",
        help="word level: split on whitespace only; a literal <unk> is unknown",
    )
    p.add_argument("--sp-model-type", choices=["unigram", "bpe"], default="unigram")
    p.add_argument("--valid-fraction", type=_float_in(0, 0.5, hi_open=True), default=0.05)
    p.add_argument("--test-fraction", type=_float_in(0, 0.5, hi_open=True), default=0.05)
    p.add_argument("--valid", metavar="FILE", help="use this file as the validation split")
    p.add_argument("--test", metavar="FILE", help="use this file as the test split")
    p.add_argument(
        "--unit",
        choices=["line", "paragraph"],
        default="line",
        help="a sequence is one line, or one blank-line separated paragraph",
    )
    p.add_argument("--seed", type=_nonneg_int, default=1234)


def _add_train(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("train", help="train a model on a corpus directory")
    p.add_argument("--corpus", required=True, help="directory written by `rnnlm corpus`")
    p.add_argument("--out", required=True, help="run directory (best/ and latest/ checkpoints)")
    p.add_argument(
        "--mode",
        choices=["sentence", "stream"],
        default=None,
        help="sentence: each line from <bos>; stream: char-rnn style (default: sentence)",
    )
    p.add_argument(
        "--cell",
        choices=["rnn", "gru", "lstm", "gru-simple", "lstm-peephole"],
        default=None,
        help="torch's fused rnn, gru, lstm (default lstm), or the slower reference "
        "gru-simple (update gate only) and lstm-peephole",
    )
    p.add_argument("--layers", type=_positive_int, default=None)
    p.add_argument("--hidden", type=_positive_int, default=None)
    p.add_argument("--embedding", type=_positive_int, default=None)
    p.add_argument(
        "--dropout",
        type=_float_in(0, 1, hi_open=True),
        default=None,
        help="locked (variational) dropout on embeddings and RNN output",
    )
    p.add_argument("--weight-drop", type=_float_in(0, 1, hi_open=True), default=None,
                   help="DropConnect on the hidden-to-hidden weights")  # fmt: skip
    tied = p.add_mutually_exclusive_group()
    tied.add_argument("--tied", dest="tied", action="store_true", default=None)
    tied.add_argument("--no-tied", dest="tied", action="store_false")
    p.add_argument(
        "--adaptive",
        dest="adaptive",
        choices=["auto", "on", "off"],
        default="auto",
        help="adaptive softmax (auto: on for vocabularies over 20,000)",
    )
    p.add_argument(
        "--bidirectional",
        action="store_true",
        default=None,
        help="also train a backward model (ELMo's biLM: shared embedding and output layer, "
        "its own recurrent layers); sentence mode only. Sampling uses the forward model; "
        "scores gain backward_logprob and average_logprob",
    )
    p.add_argument(
        "--residual",
        action="store_true",
        default=None,
        help="train the RNN over the n-gram: its logits are added to the n-gram's log-probs "
        "(estimated without each sentence's fold) before the softmax, so it learns what "
        "the counts miss; sentence mode, full softmax, small vocabularies (characters)",
    )
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default=None)
    p.add_argument("--lr", type=_float_in(0, 1000, lo_open=True), default=None)
    p.add_argument("--weight-decay", type=_float_in(0, 10), default=None)
    p.add_argument("--schedule", choices=["cosine", "plateau", "constant"], default=None)
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--bptt", type=_positive_int, default=None)
    p.add_argument(
        "--precision", choices=["fp32", "bf16", "auto"], default=None,
        help="the training step's matrix products: bf16 autocast (weights stay float32); "
        "auto: bf16 where the CPU multiplies bf16 natively (AMX, AVX-512 BF16) or on a GPU",
    )  # fmt: skip
    p.add_argument("--clip", type=_float_in(0, 1e6), default=None, help="0: no clipping")
    p.add_argument(
        "--patience",
        type=_positive_int,
        default=None,
        help="evaluations without improvement before stopping",
    )
    p.add_argument("--eval-every", type=_positive_int, default=None, help="steps")
    p.add_argument("--max-steps", type=_positive_int, default=None)
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument(
        "--time-budget", type=_float_in(0, 1e9, lo_open=True), default=None, metavar="SECONDS"
    )
    p.add_argument("--save-every", type=_positive_int, default=None, metavar="STEPS")
    p.add_argument("--resume", action="store_true", help="continue from OUT/latest")
    p.add_argument("--seed", type=_nonneg_int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--ngram-order", type=_nonneg_int, default=None, metavar="N",
        help="the n-gram mixed with the RNN, estimated when training ends (default: 10 for "
        "characters, 5 otherwise; 0: none)",
    )  # fmt: skip
    p.add_argument(
        "--ngram-arpa", default=None, metavar="FILE",
        help="mix in this KenLM/SRILM ARPA model (.arpa or .arpa.gz) instead of estimating one",
    )  # fmt: skip
    p.add_argument(
        "--match-len", type=_nonneg_int, default=None, metavar="N",
        help="the match model over the training text, mixed in with the n-gram where it pays "
        "on validation text: tokens it reaches back (default: 64; 0: none)",
    )  # fmt: skip
    p.add_argument(
        "--nproc", type=_positive_int, default=1, metavar="N",
        help="train with N processes on this machine (DistributedDataParallel via torchrun; "
        "--batch-size is per process)",
    )  # fmt: skip


def _add_use(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("eval", help="perplexity of a model on a text file")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--input", required=True, help="UTF-8 text, one sequence per line")
    p.add_argument(
        "--free-running",
        type=_nonneg_int,
        default=0,
        metavar="N",
        help="also sample N sequences (temperature 1, fed their own tokens) and compare their "
        "length, <eos> rate and repeated 4-grams with the input's",
    )
    p.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=None,
        help="length cap of the free-running samples (default: twice the longest input line)",
    )
    p.add_argument("--seed", type=_nonneg_int, default=0, help="free-running sample i: seed + i")
    p.add_argument(
        "--adapt",
        action="store_true",
        help="also score the lines in order as one document, the model adapting to each line "
        "once scored (the RNN's gradient step and a cache of the lines read); reported as "
        "`adapted`, beside the static figures",
    )
    p.add_argument(
        "--adapt-lr",
        type=_float_in(0, 10),
        default=None,
        help="SGD rate of --adapt's RNN step (default 0.3; 0: no step)",
    )
    p.add_argument(
        "--adapt-cache",
        type=_int_at_least(0),
        default=None,
        help="tokens of the lines read that --adapt's cache holds (default 8192; 0: none)",
    )
    p.add_argument(
        "--adapt-decay",
        type=_float_in(0, 1),
        default=0.0,
        help="after each step, the fraction of the way back to the trained weights",
    )
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("score", help="log-probability of texts, one JSON object each")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--input", help="score every line of this file ('-' for stdin)")
    p.add_argument("--no-bos", dest="bos", action="store_false")
    p.add_argument("--no-eos", dest="eos", action="store_false")
    p.add_argument("--per-token", action="store_true")
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("sample", help="generate text")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-tokens", type=_nonneg_int, default=200)
    p.add_argument("--temperature", type=_float_in(0, 100), default=1.0, help="0 is greedy")
    p.add_argument("--top-k", type=_nonneg_int, default=0)
    p.add_argument("--top-p", type=_float_in(0, 1, lo_open=True), default=1.0)
    p.add_argument("--min-p", type=_float_in(0, 1, hi_open=True), default=0.0)
    p.add_argument("--seed", type=_nonneg_int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("-n", type=_positive_int, default=1, help="number of samples")
    p.add_argument("--json", action="store_true", help="one JSON object per sample")
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("serve", help="serve models over HTTP")
    p.add_argument(
        "--models", help="directory of checkpoint directories (default: RNNLM_MODELS_DIR)"
    )
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=_positive_int, default=None)
    p.add_argument("--default-model", default=None)

    p = sub.add_parser("demo", help="build the demo model from the standard library's docstrings")
    p.add_argument("--out", default="checkpoints", help="models directory (demo model in OUT/demo)")
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=1000,
        help="optimizer steps, from a fixed seed (the same model on any machine)",
    )
    p.add_argument(
        "--max-valid-ppl",
        type=_float_in(1, 1e9),
        default=6.5,
        metavar="PPL",
        help="fail if the RNN's validation perplexity per character is above this",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if it exists")  # fmt: skip


def _add_ngram(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("ngram", help="the n-gram inside a model: estimate, import, export, remove")
    actions = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    a = actions.add_parser(
        "estimate", help="estimate a modified Kneser-Ney n-gram from a corpus's training split"
    )
    a.add_argument("--corpus", required=True, help="corpus directory (from `rnnlm corpus`)")
    a.add_argument("--order", type=_positive_int, default=None, help="default: 10 char, 5 else")
    where = a.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--model", help="put it into this checkpoint (λ fit on the validation split)"
    )
    where.add_argument("--arpa", metavar="FILE", help="write it as an ARPA file instead")
    a.add_argument("--lambda", dest="weight", type=_float_in(0, 1), default=None,
                   help="the RNN's weight in the mixture for every history, instead of "
                   "fitting one per mixing bucket (and, for a vocabulary of at most 1,024 "
                   "tokens, a gate)")  # fmt: skip
    a = actions.add_parser("import", help="use an ARPA file (KenLM, SRILM) as a model's n-gram")
    a.add_argument("--model", required=True, help="checkpoint directory")
    a.add_argument("--arpa", required=True, metavar="FILE", help=".arpa or .arpa.gz")
    a.add_argument("--corpus", default=None, help="fit λ on this corpus's validation split")
    a.add_argument("--lambda", dest="weight", type=_float_in(0, 1), default=None,
                   help="the RNN's weight in the mixture (without --corpus: 0.5)")  # fmt: skip
    a = actions.add_parser("export", help="write a model's n-gram as an ARPA file")
    a.add_argument("--model", required=True, help="checkpoint directory")
    a.add_argument("--out", required=True, metavar="FILE", help=".arpa (or .arpa.gz)")
    a = actions.add_parser("remove", help="take the n-gram out of a model (the RNN alone)")
    a.add_argument("--model", required=True, help="checkpoint directory")


def _add_rescore(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "rescore",
        help="choose each utterance's hypothesis from an n-best list (Kaldi, NeMo, JSON lines)",
        description="total_logprob = acoustic_logprob + lm_weight * lm_logprob + "
        "word_bonus * words, every log-probability in natural log",
    )
    p.add_argument("nbest", metavar="NBEST", help="the n-best file")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--format", choices=["kaldi", "nemo", "jsonl"], default="kaldi",
                   help="kaldi: '<utt>-<n> words' lines; nemo: 'text<TAB>score' TSV, "
                   "--beam-size lines an utterance; jsonl: {id, text, acoustic_logprob}",
                   )  # fmt: skip
    p.add_argument("--acoustic-costs", metavar="FILE",
                   help="kaldi: '<utt>-<n> <cost>' lines, cost = -ln p")  # fmt: skip
    p.add_argument("--beam-size", type=_positive_int, default=None,
                   help="nemo: hypotheses per utterance")  # fmt: skip
    p.add_argument("--lm-weight", type=_float_in(0, 1e6), default=1.0,
                   help="weight of the model's natural-log probability (default 1)")  # fmt: skip
    p.add_argument("--word-bonus", type=_float_in(-1e6, 1e6), default=0.0,
                   help="added per word of a hypothesis (default 0)")  # fmt: skip
    p.add_argument("--tune", metavar="REFS",
                   help="reference transcripts ('<utt> words' lines; nemo: one a line, in "
                   "order): grid-search --lm-weight and --word-bonus for the lowest WER, "
                   "report WER before, after and the oracle")  # fmt: skip
    p.add_argument("--out", default="-", help="'<utt> text' per utterance (default stdout)")
    p.add_argument("--scores", metavar="FILE",
                   help="every hypothesis' LM score, a TSV whose header names each column's "
                   "log base")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_parser() -> _Parser:
    parser = _Parser(prog="rnnlm", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_corpus(sub)
    _add_train(sub)
    _add_use(sub)
    _add_ngram(sub)
    _add_rescore(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from rnnlm.models.errors import RnnlmError

    try:
        if args.command == "corpus":
            from rnnlm.training.corpus import corpus_command

            corpus_command(args)
        elif args.command == "train":
            from rnnlm.training.train import train_command

            train_command(args)
        elif args.command == "ngram":
            from rnnlm.training.ngram_command import ngram_command

            ngram_command(args)
        elif args.command == "eval":
            from rnnlm.training.evaluate import eval_command

            eval_command(args)
        elif args.command in ("score", "sample"):
            from rnnlm import commands

            getattr(commands, f"{args.command}_command")(args)
        elif args.command == "rescore":
            from rnnlm.rescore import rescore_command

            rescore_command(args)
        elif args.command == "serve":
            from rnnlm.app.main import serve

            serve(args.models, args.host, args.port, args.default_model)
        elif args.command == "demo":
            from rnnlm.demo import demo_command

            demo_command(args)
    except RnnlmError as e:
        print(f"rnnlm {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rnnlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
