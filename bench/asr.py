"""Word error rate saved by a language model: n-best rescoring and CTC beam search.

    python bench/asr.py --model RUN/best --arpa WORD5.arpa --data data/fortunes/ptb \
        [--nbest-sentences 400] [--ctc-sentences 150] [--seed 1] [--work DIR]

Both halves use Debian's fortunes prepared Penn-Treebank style (bench/prepare_data.py):
sentences of the validation split tune each system's weights, sentences of the test
split measure it. Nothing is downloaded; the same seed gives the same data.

**N-best lists** (Kaldi style, as a recogniser's lattice would give them). Each test
sentence of 4 to 30 words, none `<unk>`, gets up to 10 hypotheses, made by this noise
model: a hypothesis makes 1 + Poisson(0.7) edits (at most 4), each one of
  - a word swapped for one spelled alike (another vocabulary word at edit distance 1
    or 2 and within one letter of its length, the more frequent first), p 0.55,
  - a word dropped, p 0.15, or a frequent short word inserted, p 0.15,
  - two neighbours swapped, p 0.15;
the reference itself is in the list 4 times out of 5 (so the oracle is not perfect).
Each hypothesis' acoustic log-probability is minus the cost of its edits (a spelled-
alike swap 1.0, a drop or an insertion 2.0, a neighbour swap 1.5) plus Gaussian noise
(σ 1.5): the acoustics alone prefer the reference but often pick another. Then

    total = acoustic_logprob + lm_weight · lm_logprob + word_bonus · words   (natural log)

with `lm_weight` and `word_bonus` grid-searched on the validation lists (rnnlm/rescore.py's
grid and tie rule) for each language model: none, KenLM's 5-gram (the `kenlm` module's
`score`), rnnlm's model (`LanguageModel.score_batch`). The test lists are also written
as files and rescored by the real `rnnlm rescore` command with the tuned weights, whose
WER must be the one computed here.

**CTC posteriors** (what an acoustic model's softmax gives, frame by frame). Each test
sentence of 4 to 20 words is spelled out over the characters it uses: a blank frame
between repeated characters and before one character in four, then one frame a
character (two, alike, for one in five). A character's frame is clean (0.8 on it, 0.1
on the blank, 0.1 spread over the rest), or, for a letter with others that sound or
look alike (vowels among vowels, and the groups in CONFUSIONS), confused one time in
three and a bit (p 0.35: 0.5 on a letter alike, 0.3 on the right one), or swallowed
(p 0.05, 0.1 for a space, which merges two words: 0.55 on the blank, 0.35 on it).
pyctcdecode decodes them (beam width 24) with no language model, with the KenLM
5-gram through pyctcdecode's own KenLM path (its unigram list from the ARPA file), and
with rnnlm's model through rnnlm.ctc; `alpha` and `beta` are grid-searched on
validation sentences for each. The oracle is the best of the beams the decoder with
rnnlm's model keeps at the end.

Prints JSON lines: `asr_nbest`, `asr_ctc` (WER of each system, the ratio rnnlm/KenLM,
the tuned weights, counts, seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rnnlm.lm import LanguageModel  # noqa: E402
from rnnlm.rescore import Scored, choose, tune, wer, word_errors  # noqa: E402

LN10 = math.log(10)
CONFUSIONS = ["aeiou", "bpv", "dt", "gkcq", "fv", "sz", "mn", "lr", "hw", "jy", "x"]


def read_sentences(path: Path, lo: int, hi: int, limit: int) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if lo <= len(words) <= hi and "<unk>" not in words:
            out.append(" ".join(words))
        if len(out) == limit:
            break
    return out


# ------------------------------------------------------------------- n-best


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


class Alike:
    """Vocabulary words spelled like a given word (edit distance 1 or 2, length ±1), found
    through an index of each word's one-letter deletions (SymSpell's trick)."""

    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts
        self.index: dict[str, set[str]] = defaultdict(set)
        for w in counts:
            for d in self._deletions(w):
                self.index[d].add(w)
        self.cache: dict[str, list[str]] = {}

    @staticmethod
    def _deletions(w: str) -> set[str]:
        return {w} | {w[:i] + w[i + 1 :] for i in range(len(w))}

    def __call__(self, word: str) -> list[str]:
        if word not in self.cache:
            near = {c for d in self._deletions(word) for c in self.index.get(d, ())}
            near.discard(word)
            ok = [c for c in near if abs(len(c) - len(word)) <= 1 and edit_distance(c, word) <= 2]
            self.cache[word] = sorted(ok, key=lambda c: -self.counts[c])[:8]
        return self.cache[word]


def make_nbest(
    sentences: list[str], counts: Counter[str], rng: np.random.Generator, size: int = 10
) -> list[tuple[list[tuple[str, float]], str]]:
    """Per sentence: ([(hypothesis, acoustic_logprob)], reference), by the noise model."""
    alike = Alike(counts)
    short = [w for w, _ in counts.most_common(200) if len(w) <= 3]
    out = []
    for ref in sentences:
        hyps: dict[str, float] = {}
        if rng.random() < 0.8:
            hyps[ref] = 0.0
        tries = 0
        while len(hyps) < size and tries < 100:
            tries += 1
            words, cost = ref.split(), 0.0
            for _ in range(min(4, 1 + int(rng.poisson(0.7)))):
                kind = rng.choice(4, p=[0.55, 0.15, 0.15, 0.15])
                at = int(rng.integers(len(words)))
                if kind == 0 and (cands := alike(words[at])):
                    words[at] = cands[int(rng.integers(len(cands)))]
                    cost += 1.0
                elif kind == 1 and len(words) > 1:
                    del words[at]
                    cost += 2.0
                elif kind == 2:
                    words.insert(at, short[int(rng.integers(len(short)))])
                    cost += 2.0
                elif kind == 3 and len(words) > 1:
                    at = min(at, len(words) - 2)
                    words[at], words[at + 1] = words[at + 1], words[at]
                    cost += 1.5
            text = " ".join(words)
            if text != ref and text not in hyps:
                hyps[text] = -cost
        noisy = [(t, c + float(rng.normal(0, 1.5))) for t, c in hyps.items()]
        order = rng.permutation(len(noisy))
        out.append(([noisy[i] for i in order], ref))
    return out


def scored(
    lists: list[tuple[list[tuple[str, float]], str]], lm_ln: list[list[float]]
) -> list[Scored]:
    out = []
    for k, ((hyps, ref), lm) in enumerate(zip(lists, lm_ln, strict=True)):
        s = Scored(
            f"u{k}",
            np.array([a for _, a in hyps], np.float64),
            np.array(lm, np.float64),
            np.array([len(t.split()) for t, _ in hyps], np.float64),
        )
        s.errors = np.array([word_errors(ref, t) for t, _ in hyps], np.float64)
        s.ref_words = len(ref.split())
        out.append(s)
    return out


def nbest_bench(
    args: argparse.Namespace, lm: LanguageModel, ken: Any, counts: Counter[str]
) -> None:
    t0 = time.monotonic()
    rng = np.random.default_rng(args.seed)
    dev = make_nbest(read_sentences(args.data / "valid.txt", 4, 30, args.nbest_sentences // 2),
                     counts, rng)  # fmt: skip
    test = make_nbest(read_sentences(args.data / "test.txt", 4, 30, args.nbest_sentences),
                      counts, rng)  # fmt: skip

    def lm_scores(lists: list[Any], system: str) -> list[list[float]]:
        texts = [[t for t, _ in hyps] for hyps, _ in lists]
        if system == "none":
            return [[0.0] * len(t) for t in texts]
        if system == "kenlm":
            return [[ken.score(t, bos=True, eos=True) * LN10 for t in ts] for ts in texts]
        flat = lm.score_batch([t for ts in texts for t in ts])
        out, at = [], 0
        for ts in texts:
            out.append([x * LN10 for x in flat[at : at + len(ts)]])
            at += len(ts)
        return out

    rows: dict[str, Any] = {}
    for system in ("none", "kenlm", "rnnlm"):
        t = time.monotonic()
        d, s = scored(dev, lm_scores(dev, system)), scored(test, lm_scores(test, system))
        if system == "none":
            weight, bonus = 0.0, 0.0
            err = wer(s, [int(np.argmax(x.acoustic)) for x in s])
        else:
            weight, bonus, _ = tune(d)
            err = wer(s, [choose(x, weight, bonus) for x in s])
        rows[system] = {"wer": round(err, 5), "lm_weight": weight, "word_bonus": bonus,
                        "seconds": round(time.monotonic() - t, 1)}  # fmt: skip
        if system == "none":
            rows["oracle"] = {"wer": round(wer(s, [int(np.argmin(x.errors)) for x in s
                                                    if x.errors is not None]), 5)}  # fmt: skip
    # The same test lists through the real command, with rnnlm's tuned weights.
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "nbest.txt", "w") as nb, open(work / "costs.txt", "w") as ac:
        for k, (hyps, _) in enumerate(test):
            for j, (text, a) in enumerate(hyps):
                nb.write(f"u{k}-{j + 1} {text}\n")
                ac.write(f"u{k}-{j + 1} {-a!r}\n")
    (work / "refs.txt").write_text("".join(f"u{k} {ref}\n" for k, (_, ref) in enumerate(test)))
    cli = subprocess.run(
        [sys.executable, "-m", "rnnlm.cli", "rescore", str(work / "nbest.txt"), "--model",
         str(args.model), "--acoustic-costs", str(work / "costs.txt"), "--tune",
         str(work / "refs.txt"), "--lm-weight", str(rows["rnnlm"]["lm_weight"]),
         "--word-bonus", str(rows["rnnlm"]["word_bonus"]), "--out", str(work / "chosen.txt"),
         "--no-progress"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    report = json.loads(cli.stdout)
    print(json.dumps({
        "bench": "asr_nbest",
        "utterances_test": len(test),
        "utterances_tune": len(dev),
        "hypotheses_test": sum(len(h) for h, _ in test),
        "reference_words_test": sum(len(r.split()) for _, r in test),
        "wer": {k: v["wer"] for k, v in rows.items()},
        "weights": {k: [v["lm_weight"], v["word_bonus"]] for k, v in rows.items() if k != "oracle"
                    and k != "none"},
        "rnnlm_to_kenlm": round(rows["rnnlm"]["wer"] / max(1e-9, rows["kenlm"]["wer"]), 4),
        "cli_wer_given_weights": round(report["wer_given_weights"], 5),
        "cli_matches": abs(report["wer_given_weights"] - rows["rnnlm"]["wer"]) < 1e-5,
        "cli_wer_tuned_on_test": round(report["wer_after"], 5),
        "seconds": round(time.monotonic() - t0, 1),
        "noise_model": "1+Poisson(0.7) edits: alike 0.55, drop 0.15, insert 0.15, swap 0.15; "
        "reference in 80%; acoustic = -cost + N(0, 1.5)",
    }), flush=True)  # fmt: skip


# --------------------------------------------------------------------- CTC


def posteriors(text: str, labels: list[str], rng: np.random.Generator) -> np.ndarray:
    """(time, labels) log-posteriors spelling `text` (the module's docstring)."""
    index = {c: i for i, c in enumerate(labels)}
    group = {c: g for g in CONFUSIONS for c in g}
    frames: list[np.ndarray] = []
    prev = None
    for ch in text:
        if ch == prev or rng.random() < 0.25:
            f = np.full(len(labels), 0.05 / len(labels))
            f[0] = 0.95
            frames.append(f)
        f = np.full(len(labels), 0.1 / len(labels))
        others = [c for c in group.get(ch, "") if c != ch and c in index]
        u = rng.random()
        if others and u < 0.35:  # confused: a letter alike wins
            f[index[others[int(rng.integers(len(others)))]]] += 0.5
            f[index[ch]] += 0.3
            f[0] += 0.1
        elif u > 1 - (0.1 if ch == " " else 0.05):  # swallowed: the blank wins
            f[0] += 0.55
            f[index[ch]] += 0.35
        else:
            f[index[ch]] += 0.8
            f[0] += 0.1
        frames += [f / f.sum()] * (2 if rng.random() < 0.2 else 1)
        prev = ch
    return np.log(np.array(frames))


def ctc_bench(args: argparse.Namespace, lm: LanguageModel) -> None:
    from pyctcdecode import build_ctcdecoder

    from rnnlm.ctc import build_decoder

    t0 = time.monotonic()
    rng = np.random.default_rng(args.seed + 1)
    dev = read_sentences(args.data / "valid.txt", 4, 20, args.ctc_tune_sentences)
    test = read_sentences(args.data / "test.txt", 4, 20, args.ctc_sentences)
    labels = ["", " ", *sorted({c for s in dev + test for c in s} - {" "})]
    dev_post = [posteriors(s, labels, rng) for s in dev]
    test_post = [posteriors(s, labels, rng) for s in test]
    beam = args.beam_width

    def errors(decoder: Any, posts: list[np.ndarray], refs: list[str]) -> float:
        e = sum(
            word_errors(r, decoder.decode(p, beam_width=beam))
            for p, r in zip(posts, refs, strict=True)
        )
        return e / sum(len(r.split()) for r in refs)

    rows: dict[str, Any] = {}
    plain = build_ctcdecoder(labels)
    rows["none"] = {"wer": round(errors(plain, test_post, test), 5)}
    decoders = {
        "kenlm": build_ctcdecoder(labels, kenlm_model_path=str(args.arpa)),
        "rnnlm": build_decoder(labels, lm),
    }
    for system, decoder in decoders.items():
        t = time.monotonic()

        grid = [(a, b) for a in args.alphas for b in args.betas]
        dev_wer = {}
        for a, b in grid:
            decoder.reset_params(alpha=a, beta=b)
            dev_wer[(a, b)] = errors(decoder, dev_post, dev)
        tuned = min(grid, key=lambda ab: (dev_wer[ab], ab))  # the smaller weights on a tie
        decoder.reset_params(alpha=tuned[0], beta=tuned[1])
        err = errors(decoder, test_post, test)
        rows[system] = {"wer": round(err, 5), "alpha": tuned[0], "beta": tuned[1],
                        "seconds": round(time.monotonic() - t, 1)}  # fmt: skip
        if system == "rnnlm":  # the oracle: the best of the beams it keeps at the end
            oracle = sum(min(word_errors(r, b[0]) for b in decoder.decode_beams(p, beam_width=beam))
                         for p, r in zip(test_post, test, strict=True))  # fmt: skip
            rows["oracle"] = {"wer": round(oracle / sum(len(r.split()) for r in test), 5)}
    print(json.dumps({
        "bench": "asr_ctc",
        "sentences_test": len(test),
        "sentences_tune": len(dev),
        "reference_words_test": sum(len(r.split()) for r in test),
        "frames_test": int(sum(len(p) for p in test_post)),
        "labels": len(labels),
        "beam_width": beam,
        "wer": {k: v["wer"] for k, v in rows.items()},
        "weights": {k: [rows[k]["alpha"], rows[k]["beta"]] for k in ("kenlm", "rnnlm")},
        "seconds_per_system": {k: rows[k]["seconds"] for k in ("kenlm", "rnnlm")},
        "rnnlm_to_kenlm": round(rows["rnnlm"]["wer"] / max(1e-9, rows["kenlm"]["wer"]), 4),
        "seconds": round(time.monotonic() - t0, 1),
    }), flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="the rnnlm word model (best/)")
    p.add_argument("--arpa", type=Path, required=True, help="KenLM's word 5-gram")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "fortunes" / "ptb")
    p.add_argument("--work", type=Path, default=ROOT / "data" / "bench" / "asr")
    p.add_argument("--nbest-sentences", type=int, default=400)
    p.add_argument("--ctc-sentences", type=int, default=300)
    p.add_argument("--ctc-tune-sentences", type=int, default=40)
    p.add_argument("--beam-width", type=int, default=24)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.8, 1.2])
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0, 4.0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--only", choices=["nbest", "ctc"], default=None)
    args = p.parse_args()
    import kenlm

    lm = LanguageModel(args.model)
    counts = Counter((args.data / "train.txt").read_text(encoding="utf-8").split())
    counts.pop("<unk>", None)
    if args.only in (None, "nbest"):
        nbest_bench(args, lm, kenlm.Model(str(args.arpa)), counts)
    if args.only in (None, "ctc"):
        ctc_bench(args, lm)


if __name__ == "__main__":
    main()
