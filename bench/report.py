"""bench/results.jsonl -> bench/RESULTS.md, with every goal judged PASS or MISSED.

    python bench/report.py [bench/results.jsonl] [-o bench/RESULTS.md]

`bench/run.py` calls `goals()` and `render()` at the end of a run; this script
renders a results file again (after editing the goal text, say) without
measuring anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ISSUE_BUDGET_S = 600.0  # what the quality goals are stated for: 10 minutes of training
RUN_LIMIT_S = 30 * 60  # `make bench` end to end
# bench/run.py's, in order
STAGES = (
    "data", "ngram", "corpus", "rnnlm-ngram", "speed", "service", "quality", "mixing", "asr",
)  # fmt: skip
Rec = dict[str, Any]
_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}  # bench/speed.py gemm's names


def _find(records: Iterable[Rec], bench: str, **match: Any) -> Rec | None:
    found = None
    for r in records:
        if r.get("bench") == bench and all(r.get(k) == v for k, v in match.items()):
            found = r
    return found


def _all(records: Iterable[Rec], bench: str, **match: Any) -> list[Rec]:
    return [
        r
        for r in records
        if r.get("bench") == bench and all(r.get(k) == v for k, v in match.items())
    ]


def _goal(
    goal: str,
    measured: float | None,
    target: float,
    op: str,
    shown: str,
    target_text: str,
    note: str = "",
) -> Rec:
    if measured is None:
        result = "NOT MEASURED"
    else:
        ok = (
            measured < target
            if op == "<"
            else measured <= target
            if op == "<="
            else (measured >= target)
        )
        result = "PASS" if ok else "MISSED"
    return {
        "bench": "goal",
        "goal": goal,
        "measured": measured,
        "measured_text": shown,
        "target": target,
        "target_text": target_text,
        "result": result,
        "note": note,
    }


def goals(records: list[Rec]) -> list[Rec]:
    """The issue's goals, judged on these records (NOT MEASURED where a record is missing)."""
    out: list[Rec] = []
    ng = _find(records, "ngram", level="word")
    q = _find(records, "quality", name="word-default")
    if ng is not None:
        base = float(ng["test_ppl"])
        ppl = float(q["test_ppl"]) if q else None
        budget = float(q["budget_s"]) if q else None
        note = ""
        if budget is not None and budget != ISSUE_BUDGET_S:
            note = (
                f"at {budget:g} s of training, not the {ISSUE_BUDGET_S:g} s the goal is stated for "
                "(`make bench-quality` runs that)"
            )
        shown = f"test PPL {ppl:.2f}, {_vs(ppl / base)} than the 5-gram's" if ppl else "–"
        out.append(
            _goal(
                "rnnlm word-level defaults beat the KenLM 5-gram (first rung)",
                ppl,
                base,
                "<",
                shown,
                f"< {base:.2f}",
                note,
            )
        )
        out.append(
            _goal(
                "... by at least 25% in test perplexity",
                ppl,
                0.75 * base,
                "<=",
                shown,
                f"<= {0.75 * base:.2f} (0.75 x 5-gram)",
                note,
            )
        )
    else:
        out.append(
            _goal(
                "rnnlm word-level defaults beat the KenLM 5-gram by >= 25%",
                None,
                0,
                "<=",
                "–",
                "<= 0.75 x 5-gram PPL",
                "no n-gram result",
            )
        )
    out += ngram_goals(records)
    out += serving_goals(records)
    out += asr_goals(records)
    run = _find(records, "run")
    machine = _find(records, "machine") or {}
    if run:
        budgets = machine.get("budgets_s", {})
        whole = set(STAGES) <= set(run["stages"])  # a partial run says nothing of the whole
        minutes = f"{run['wall_s'] / 60:.1f} min"
        out.append(
            _goal(
                "`make bench` runs end to end in under 30 minutes",
                run["wall_s"] / 60 if whole else None,
                RUN_LIMIT_S / 60,
                "<",
                minutes if whole else "–",
                "< 30 min",
                f"word runs {_s(budgets.get('word'))}, char/sentencepiece "
                f"{_s(budgets.get('char'))}; stages {', '.join(run['stages'])}"
                + ("; `make install` not counted" if whole else f" only: {minutes}"),
            )
        )
    return out


def ngram_goals(records: list[Rec]) -> list[Rec]:
    """The n-gram issue's goals: rnnlm's n-gram matches KenLM's, the mixture beats it by a
    margin, estimation is quick, and mixing costs the service little."""
    out: list[Rec] = []
    for level, unit, what in (("word", "test PPL", "5-gram"), ("char", "bits/char", "10-gram")):
        r = _find(records, "rnnlm_ngram", level=level)
        ratio = r.get("ratio_to_kenlm") if r else None
        shown = f"{100 * (ratio - 1):+.2f}% ({unit})" if ratio is not None else "–"
        out.append(_goal(f"rnnlm's own {level} {what} is within 1% of KenLM's lmplz",
                         None if ratio is None else abs(ratio - 1) * 100, 1.0, "<=", shown,
                         "within ±1%"))  # fmt: skip
    for name, key, target, aim, base in (
        ("word-default", "ppl_ratio_to_ngram", 0.80, 0.75, "KenLM 5-gram's test PPL"),
        ("char-default", "bpc_ratio_to_ngram", 0.85, None, "character 10-gram's bits/char"),
    ):
        q = _find(records, "quality", name=name)
        ratio = q.get(key) if q else None
        note = ""
        if q and float(q["budget_s"]) != ISSUE_BUDGET_S:
            note = (
                f"at {q['budget_s']:g} s of training, not {ISSUE_BUDGET_S:g} s "
                "(`make bench-quality`)"
            )
        if q and "lambda" in q:
            note = (note + "; " if note else "") + f"λ {q['lambda']:.3f}"
        shown = f"{ratio:.3f}x" if ratio is not None else "–"
        goal = f"{name}: the model (RNN + its n-gram) at most {target:.2f}x the {base}"
        if aim:
            goal += f" (aim {aim:.2f}x)"
        out.append(_goal(goal, ratio, target, "<=", shown, f"<= {target:.2f}x", note))
    est = [r for r in _all(records, "ngram_estimate") if r["tokens"] >= 10_000_000]
    e = est[0] if est else None
    out.append(_goal("5-gram of 10M tokens estimated in under 60 s", e["seconds"] if e else None,
                     60.0, "<", f"{e['seconds']:.1f} s" if e else "–", "< 60 s"))  # fmt: skip
    out.append(_goal("... using under 4 GB", e["peak_mib"] / 1024 if e else None, 4.0, "<",
                     f"{e['peak_mib'] / 1024:.2f} GiB peak" if e else "–", "< 4 GB"))  # fmt: skip
    for m in _all(records, "mixing_cost"):
        worst = m.get("worst_ratio")
        parts = ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in m.items() if isinstance(v, dict))
        what = {"match": "its match model", "gate": "its mixing gate (against its λ table)"
                }.get(m.get("part", ""), "the n-gram")  # fmt: skip
        out.append(_goal(f"mixing in {what} keeps >= 80% of tokens/s ({m['model']})", worst,
                         0.8, ">=", parts or "–", ">= 0.80x"))  # fmt: skip
    return out


def serving_goals(records: list[Rec]) -> list[Rec]:
    """The serving goals, from bench/serving.py (server pinned to one core, the load on
    the other), each a fraction of a limit measured in the same run: per token at one
    stream, 32 streams against the GEMM bound and against the engine alone (no HTTP),
    and scoring against the GEMM bound. (An earlier "32 streams at least 15x one
    stream" asked for more than the GEMM bound allows on a CPU where one stream is
    fast: docs/measured.md, 2026-12-05.)"""
    out: list[Rec] = []
    summaries = _all(records, "serving_summary") or [{"model": "untrained"}]
    for s in summaries:
        label = s["model"]
        ms = s.get("service_1_ms_per_token")
        out.append(_goal(f"one stream at most 0.25 ms per token through HTTP ({label})", ms,
                         0.25, "<=", f"{ms:.3f} ms" if ms else "–", "<= 0.25 ms"))  # fmt: skip
        share, sp = s.get("service_share_of_engine_32"), s.get("speedup_32")
        shown = (f"{100 * share:.1f}% ({s['service_32_tokens_per_s']:,.0f} of "
                 f"{s['engine_32_tokens_per_s']:,.0f} tok/s; {sp:.1f}x one stream)"
                 ) if share else "–"  # fmt: skip
        out.append(_goal(f"the service at 32 streams at least 85% of the engine alone ({label})",
                         100 * share if share else None, 85.0, ">=", shown, ">= 85%"))  # fmt: skip
        pct = s.get("pct_of_gemm_bound_32")
        shown = (f"{pct:.1f}% ({s['service_32_tokens_per_s']:,.0f} of "
                 f"{s['gemm_bound_tokens_per_s']:,.0f} tok/s)") if pct else "–"  # fmt: skip
        out.append(_goal(f"32 streams at least 50% of the GEMM-bound rate ({label})", pct, 50.0,
                         ">=", shown, ">= 50%"))  # fmt: skip
        pct = s.get("score_64_pct_of_gemm_bound")
        shown = (f"{pct:.1f}% ({s['score_64_tokens_per_s']:,.0f} of "
                 f"{s['gemm_bound_tokens_per_s']:,.0f} tok/s)") if pct else "–"  # fmt: skip
        out.append(_goal(f"/score at batch 64 at least 60% of the GEMM-bound rate ({label})", pct,
                         60.0, ">=", shown, ">= 60%"))  # fmt: skip
    return out


def asr_goals(records: list[Rec]) -> list[Rec]:
    """The decoder issue's goals: word error rate against KenLM's 5-gram in n-best
    rescoring and in CTC beam search (bench/asr.py), and 64 beam-search states' next
    log-probabilities against the GEMM bound (bench/beam_speed.py)."""
    out: list[Rec] = []
    for bench, what in (("asr_nbest", "n-best rescoring"), ("asr_ctc", "CTC beam search")):
        r = _find(records, bench)
        ratio = r["rnnlm_to_kenlm"] if r else None
        shown = "–"
        if r:
            w = r["wer"]
            shown = (f"{ratio:.3f}x (WER {100 * w['rnnlm']:.2f}% vs {100 * w['kenlm']:.2f}%; "
                     f"none {100 * w['none']:.2f}%, oracle {100 * w['oracle']:.2f}%)")  # fmt: skip
        out.append(_goal(f"{what}: rnnlm's WER at most 0.70x KenLM 5-gram's", ratio, 0.70,
                         "<=", shown, "<= 0.70x"))  # fmt: skip
    b = _find(records, "beam_states")
    pct = b["pct_of_gemm_bound"] if b else None
    shown = (f"{pct:.1f}% ({b['states_per_s']:,.0f} of {b['gemm_bound_states_per_s']:,.0f} "
             f"states/s, {b['ms_per_round']:.2f} ms a step)") if b else "–"  # fmt: skip
    out.append(_goal("64 beam-search states' next log-probs at least 50% of the GEMM bound",
                     pct, 50.0, ">=", shown, ">= 50%"))  # fmt: skip
    return out


def _s(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:g} s"


# ------------------------------------------------------------------ render


def _n(x: Any, digits: int = 0) -> str:
    if x is None:
        return "–"
    if isinstance(x, int | float):
        return f"{x:,.{digits}f}"
    return str(x)


def _vs(ratio: float) -> str:
    """A ratio of two perplexities (or bit rates) in words: "4.1% lower", "2.4% higher"."""
    return f"{100 * abs(1 - ratio):.1f}% {'lower' if ratio < 1 else 'higher'}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _curve(curve: list[list[float]]) -> str:
    return " · ".join(f"{t:.0f} s: {p:,.1f}" for t, p in curve)


def _model_text(m: dict[str, Any]) -> str:
    cell = str(m.get("cell", "lstm")).upper()
    out = f"{m.get('layers')}x{m.get('hidden')} {cell}, {m.get('embedding')}-d emb."
    if m.get("adaptive_cutoffs"):
        out += ", adaptive softmax"
    if m.get("tied"):
        out += ", tied"
    if m.get("residual"):
        out += ", over its n-gram"
    return out


def _cache(q: Rec) -> str:
    """The adapting row's cache, where the run had one (records before it: none)."""
    return f", cache {q['adapt_cache']:,} tokens" if q.get("adapt_cache") else ""


def render(records: list[Rec]) -> str:
    machine = _find(records, "machine") or {}
    run = _find(records, "run") or {}
    budgets = machine.get("budgets_s", {})
    L: list[str] = []
    add = L.append
    add("# Benchmark results")
    add("")
    results = run.get("results", "bench/results.jsonl")
    add(
        f"Generated by `bench/run.py` (`make bench`, or `make bench-quality` for the -600s files) "
        f"from `{results}`, one JSON object per measurement; `python bench/report.py {results}` "
        "renders it again. Do not edit by hand."
    )
    add("")
    add(f"- **Date**: {machine.get('date', '?')}; commit `{machine.get('git_commit') or '?'}`")
    add(
        f"- **Machine**: {machine.get('cpu_model', '?')}, {machine.get('logical_cpus', '?')} "
        f"logical CPUs ({machine.get('physical_cores') or '?'} physical cores; "
        f"{', '.join(machine.get('simd', [])) or 'no AVX'}), {machine.get('memory_gib', '?')} GiB, "
        f"{machine.get('os', '?')}; Python {machine.get('python', '?')}, "
        f"torch {machine.get('torch', '?')}"
    )
    add(
        f"- **Threads**: training and GEMM {machine.get('train_threads', '?')}, the server "
        f"{machine.get('server_threads', 1)} (the load generator shares the same cores)"
    )
    add(
        f"- **1-minute load average** when the run started: {machine.get('load_1m', '?')} "
        "(each measurement records its own, including the benchmark's own threads)"
    )
    if budgets:
        add(
            f"- **Training budgets**: {_s(budgets.get('word'))} per word-level run, "
            f"{_s(budgets.get('char'))} per character and sentencepiece run "
            f"(the quality goals are stated for {ISSUE_BUDGET_S:g} s: "
            "`make bench-quality`)"
        )
    if run:
        add(
            f"- **This run took** {run['wall_s'] / 60:.1f} min (stages: {', '.join(run['stages'])})"
        )
    add("")

    add("## Goals")
    add("")
    add(_row("goal", "measured", "target", "result", "note"))
    add(_row("---", "---", "---", "---", "---"))
    for g in _all(records, "goal"):
        res = g["result"]
        add(_row(g["goal"], g["measured_text"], g["target_text"], f"**{res}**", g.get("note", "")))
    add("")

    ngw = _find(records, "ngram", level="word")
    ngc = _find(records, "ngram", level="char")
    data = _find(records, "data")
    quality = _all(records, "quality")
    words = [q for q in quality if q["level"] == "word"]
    chars = [q for q in quality if q["level"] == "char"]
    if ngw or words:
        add("## Quality: word level against a 5-gram, on the same test split")
        add("")
        if data:
            t = data["splits"]["test"]
            tr = data["splits"]["train"]
            add(
                f"Debian `fortunes` ({data['files']} files, {data['fortunes_read']:,} fortunes), "
                "Penn-Treebank style by `bench/prepare_data.py`: lowercased, punctuation split, "
                f"{data['vocab_words_kept']:,}-word vocabulary, `<unk>` for the rest, `<eos>` per "
                f"line; train {tr['tokens_with_eos']:,} tokens, test {t['tokens_with_eos']:,} "
                f"tokens ({t['sequences']:,} lines; counts include `<eos>`)."
            )
            add("")
        add(
            "Perplexity per line (sentence): every token and `<eos>` predicted, from `<s>` / "
            "`<bos>` and a fresh state, PPL = exp(-Σ ln p / (tokens + lines)). rnnlm's number "
            "is `rnnlm eval --model RUN/best --input data/fortunes/ptb/test.txt`; "
            "stream-mode models are scored the same way (each line from a zero state after "
            "`<eos>`), not as one running text as the PyTorch example evaluates itself."
        )
        add("")
        add(
            _row(
                "model",
                "budget",
                "CPU-min",
                "tokens seen (epochs)",
                "valid PPL (best at)",
                "test PPL",
                "vs 5-gram",
            )
        )
        add(_row("---", "--:", "--:", "--:", "--:", "--:", "--:"))
        if ngw:
            add(
                _row(
                    f"KenLM {ngw['order']}-gram, modified Kneser-Ney",
                    f"build {ngw['build_s']:.0f} s",
                    "–",
                    "–",
                    _n(ngw["valid_ppl"], 2),
                    f"**{ngw['test_ppl']:.2f}**",
                    "–",
                )
            )
        rn = _find(records, "rnnlm_ngram", level="word")
        if rn:
            add(_row(f"rnnlm's own {rn['order']}-gram (inside every word model)",
                     f"build {rn['estimate_s']:.1f} s", "–", "–", _n(rn["valid_ppl"], 2),
                     f"**{rn['test_ppl']:.2f}**",
                     _vs(rn["ratio_to_kenlm"]) if rn.get("ratio_to_kenlm") else "–"))  # fmt: skip
        for q in words:
            vs = _vs(q["ppl_ratio_to_ngram"]) if q.get("ppl_ratio_to_ngram") is not None else "–"
            mixed = f", λ {q['lambda']:.3f}" if "lambda" in q else ""
            mixed += f", {q['precision']} steps" if q.get("precision") else ""
            add(
                _row(
                    f"{q['name']}: {q['recipe']} ({_model_text(q['model'])}, "
                    f"{_n(q['parameters'])} params{mixed})",
                    f"{q['budget_s']:g} s",
                    _n(q["cpu_minutes"], 1),
                    f"{_n(q['tokens_seen'])} ({q['epochs']})",
                    f"{q['best_valid_ppl']:.2f} ({_n(q['best_at_s'])} s)",
                    f"**{q['test_ppl']:.2f}**",
                    vs,
                )
            )
            if "test_ppl_mixture" in q:
                add(_row("... without its match model (`--match-len 0`)", "", "", "", "",
                         f"{q['test_ppl_mixture']:.2f}",
                         _vs(q["mixture_ppl_ratio_to_ngram"])
                         if q.get("mixture_ppl_ratio_to_ngram") else "–"))  # fmt: skip
            if "test_ppl_rnn" in q:
                add(_row("... its RNN alone", "", "", "", "", f"{q['test_ppl_rnn']:.2f}",
                         _vs(q["rnn_ppl_ratio_to_ngram"]) if q.get("rnn_ppl_ratio_to_ngram")
                         else "–"))  # fmt: skip
            if "test_ppl_adapted" in q:
                add(_row(f"... adapting as it reads the test lines in order (`--adapt`: lr "
                         f"{q['adapt_lr']:g}{_cache(q)})", "", "", "", "",
                         f"{q['test_ppl_adapted']:.2f}",
                         _vs(q["adapted_ppl_ratio_to_ngram"])
                         if q.get("adapted_ppl_ratio_to_ngram") else "–"))  # fmt: skip
        add("")
        if any("lambda" in q for q in words):
            add(
                "A model's test PPL is its own: the mixture λ·P_rnn + (1−λ)·P_ngram of its RNN "
                "and the n-gram estimated from the same training split when training ended, "
                "λ fit on the validation split, and over it the match model of the training "
                "text where it pays (docs/ngram.md); the rows below it are the model without "
                "its match model and its RNN alone."
            )
            add("")
        for q in words:
            agree = "" if q.get("summary_matches_eval", True) else " (**not rnnlm eval's**)"
            check = (
                "same count as the 5-gram"
                if q.get("same_token_count_as_ngram")
                else (
                    "**differs from the 5-gram's count**"
                    if "same_token_count_as_ngram" in q
                    else ""
                )
            )
            add(
                f"- `{q['name']}`: `{q['command']}`; stopped by {q['stopped']} after "
                f"{q['steps']:,} steps; {_n(q.get('tokens_per_s_training'))} tokens/s while "
                f"training, {q['tokens_per_s_overall']:,.0f} over the whole budget (about "
                f"{_pct(q.get('evaluation_share_est'))} of it went to validation and "
                f"checkpoints); test {q['test_tokens']:,} tokens, {check}; "
                f"test PPL in the run's summary {_n(q['test_ppl_summary'], 2)}{agree}. "
                f"Valid PPL by elapsed time: {_curve(q['valid_curve'])}"
            )
        add("")
    if ngc or chars:
        add("## Quality: characters, in bits per character")
        add("")
        add(
            "On `data/fortunes/raw/` (cleaned text, case and punctuation kept). Bits per "
            "character = -Σ log2 p / (characters + lines): the end of each line is predicted "
            "and counted as one character by both KenLM (`</s>`) and `rnnlm eval` "
            "(`bits_per_character`: `<eos>` probability included, `len(line) + 1` characters). "
            "A sentencepiece model's total log-probability is divided by the same character count."
        )
        add("")
        add(
            _row(
                "model",
                "budget",
                "CPU-min",
                "tokens seen (epochs)",
                "test tokens",
                "test bits/char",
                "vs char n-gram",
            )
        )
        add(_row("---", "--:", "--:", "--:", "--:", "--:", "--:"))
        if ngc:
            add(
                _row(
                    f"KenLM character {ngc['order']}-gram, modified Kneser-Ney",
                    f"build {ngc['build_s']:.0f} s",
                    "–",
                    "–",
                    f"{ngc['test_chars_with_eol']:,}",
                    f"**{ngc['test_bits_per_char']:.3f}**",
                    "–",
                )
            )
        rn = _find(records, "rnnlm_ngram", level="char")
        if rn:
            add(_row(f"rnnlm's own character {rn['order']}-gram (inside every char model)",
                     f"build {rn['estimate_s']:.1f} s", "–", "–", f"{rn['test_predictions']:,}",
                     f"**{rn['test_bits_per_char']:.3f}**",
                     _vs(rn["ratio_to_kenlm"]) if rn.get("ratio_to_kenlm") else "–"))  # fmt: skip
        for q in chars:
            vs = _vs(q["bpc_ratio_to_ngram"]) if q.get("bpc_ratio_to_ngram") is not None else "–"
            mixed = f", λ {q['lambda']:.3f}" if "lambda" in q else ""
            if q.get("gate"):
                mixed += f" gated (+{q['gate_gain']:.4f} nats a token on validation)"
            mixed += f", {q['precision']} steps" if q.get("precision") else ""
            add(
                _row(
                    f"{q['name']}: {q['recipe']} ({_model_text(q['model'])}, "
                    f"{_n(q['parameters'])} params{mixed})",
                    f"{q['budget_s']:g} s",
                    _n(q["cpu_minutes"], 1),
                    f"{_n(q['tokens_seen'])} ({q['epochs']})",
                    f"{q['test_tokens']:,}",
                    f"**{q['test_bits_per_char']:.3f}**",
                    vs,
                )
            )
            if "test_bits_per_char_mixture" in q:
                add(_row("... without its match model (`--match-len 0`)", "", "", "", "",
                         f"{q['test_bits_per_char_mixture']:.3f}",
                         _vs(q["mixture_bpc_ratio_to_ngram"])
                         if q.get("mixture_bpc_ratio_to_ngram") else "–"))  # fmt: skip
            if "test_bits_per_char_rnn" in q:
                add(_row("... its RNN alone", "", "", "", "",
                         f"{q['test_bits_per_char_rnn']:.3f}",
                         _vs(q["rnn_bpc_ratio_to_ngram"]) if q.get("rnn_bpc_ratio_to_ngram")
                         else "–"))  # fmt: skip
            if "test_bits_per_char_adapted" in q:
                add(_row(f"... adapting as it reads the test lines in order (`--adapt`: lr "
                         f"{q['adapt_lr']:g}{_cache(q)})", "", "", "", "",
                         f"{q['test_bits_per_char_adapted']:.3f}",
                         _vs(q["adapted_bpc_ratio_to_ngram"])
                         if q.get("adapted_bpc_ratio_to_ngram") else "–"))  # fmt: skip
        add("")
        for q in chars:
            check = (
                "the same character count as the n-gram"
                if q.get("same_char_count_as_ngram")
                else "**a different character count**"
            )
            add(
                f"- `{q['name']}`: `{q['command']}`; {_n(q.get('tokens_per_s_training'))} "
                f"tokens/s while training, about {_pct(q.get('evaluation_share_est'))} of the "
                f"budget on validation and checkpoints; {q['test_chars_with_eol']:,} test "
                f"characters, {check}; {q['test_unk']} `<unk>`; valid PPL per token by "
                "elapsed time: "
                f"{_curve(q['valid_curve'])}"
            )
        add("")

    mixers = _all(records, "mixer")
    if mixers:
        m0 = mixers[0]
        add(f"### Other mixers of `{m0.get('model', m0['run'])}`, fit on validation "
            "(`bench/mixers.py`, issue #31; not served)")  # fmt: skip
        add("")
        add(f"The same model's parts mixed other ways, fit on the validation split "
            f"({m0['valid_tokens']:,} tokens) and scored on the test split "
            f"({m0['test_tokens']:,}), beside the served mixture (`linear-buckets`). `match*`: "
            "the match model over the training text; `*-adapting`: with the cache of the "
            "test lines read before, so rows of their own. What each is: "
            "[docs/ngram.md](../docs/ngram.md#other-mixers-measured-not-served).")  # fmt: skip
        add("")
        add(_row("mixer", "valid bits/token", "test bits/token", "vs its n-gram alone",
                 "largest error of Σ P = 1"))  # fmt: skip
        add(_row("---", "--:", "--:", "--:", "--:"))
        for m in mixers:
            add(_row(f"`{m['mixer']}`", f"{m['valid_bits']:.3f}", f"**{m['test_bits']:.3f}**",
                     _vs(m["test_bits_vs_ngram"]), f"{m['max_sum_error']:.0e}"))  # fmt: skip
        add("")

    gemms = _all(records, "gemm")
    ts = _find(records, "train_speed")
    if gemms or ts:
        add("## Speed: training against the machine's matrix-multiply peak")
        add("")
        for g in gemms:
            add(
                f"- {_DTYPE.get(g.get('dtype', 'float32'), g.get('dtype'))} GEMM "
                f"(`torch.matmul`, {g['n']}x{g['n']}), {g['threads']} thread(s): "
                f"**{g['gflops']:,.1f} GFLOP/s**"
            )
        if ts:
            c = ts["config"]
            f = ts["forward_flops_per_token"]
            add("")
            add(
                _row(
                    "configuration",
                    "tokens/s",
                    "FLOPs/token (train)",
                    "achieved GFLOP/s",
                    "GEMM GFLOP/s",
                    "share of peak",
                )
            )
            add(_row("---", "--:", "--:", "--:", "--:", "--:"))
            add(
                _row(
                    f"word default: {c['layers']}x{c['hidden']} {c['cell'].upper()}, "
                    f"{c['embedding']}-d emb., vocab {c['vocab_size']:,}, "
                    f"adaptive {c['adaptive_cutoffs']}, {c['mode']} mode, "
                    f"batch {c['batch_size']}, BPTT {c['bptt']}, {c['optimizer']}, "
                    f"{ts['threads']} threads, {ts.get('precision', 'fp32')} steps",
                    f"**{ts['tokens_per_s']:,.0f}**",
                    f"{ts['train_flops_per_token'] / 1e6:.2f} M",
                    f"{ts['achieved_gflops']:.2f}",
                    f"{ts['gemm_gflops']:,.1f} ({ts.get('precision', 'fp32')})",
                    f"**{ts['pct_of_gemm_peak']:.1f}%**",
                )
            )
            add("")
            add(
                f"FLOPs per token, forward: recurrent {f['recurrent'] / 1e6:.3f} M, projection "
                f"{f['projection'] / 1e6:.3f} M, output layer {f['output'] / 1e6:.3f} M "
                f"(adaptive tail clusters hold {ts['tail_cluster_shares']} of the training "
                f"targets); training = 3 x forward. Formula: {ts['flops_formula']}. "
                f"Timed {ts['steps']} optimizer steps ({ts['seconds']} s) of the real training "
                f"step (`bench/speed.py train`: forward, backward, clipping, {c['optimizer']}) "
                f"on the corpus's own batches; padding was {100 * ts['padding_share']:.1f}% of "
                "positions. The share of peak is against the GEMM rate in the step's precision "
                "(bf16 steps: bfloat16 `torch.matmul`)."
            )
            add("")

    summaries = _all(records, "summary")
    if summaries:
        add("## Speed: the HTTP service")
        add("")
        add(
            "`bench/bench_service.py` starts `rnnlm serve` on loopback and drives it with "
            "keep-alive HTTP/1.1 clients (`bench/loadgen.py`) on the same machine: each "
            "sampling client sends `/sample` "
            "(`max_tokens` 128) back to back; scoring sends one `/score` of 1 or 64 sentences "
            "(40–79 characters) at a time. The GEMM-bound rate is the 1-thread fp32 GEMM "
            "rate divided by the model's forward FLOPs per token."
        )
        add("")
        for s in summaries:
            label = s["model"]
            m = _find(records, "model", model=label) or {}
            cfg = m.get("config", {})
            add(
                f"### `{label}`: {cfg.get('layers')}x{cfg.get('hidden')} "
                f"{str(cfg.get('cell', '')).upper()}, {cfg.get('embedding')}-d emb., "
                f"{m.get('tokenizer')} vocabulary {cfg.get('vocab_size')}, "
                f"{_n(m.get('parameters'))} params, {m.get('server_threads')} server thread"
            )
            add("")
            if label == "untrained":
                add(
                    "Random weights with `<eos>` suppressed: every sample is exactly "
                    f"{m.get('max_tokens')} tokens (pure speed)."
                )
            elif label == "demo":
                add(
                    "The trained demo model (`rnnlm demo`): samples stop at `<eos>`, as "
                    "real requests do."
                )
            add("")
            add(
                _row(
                    "measurement",
                    "requests",
                    "tokens/s",
                    "p50 latency",
                    "p99 latency",
                    "vs GEMM bound",
                    "peak RSS",
                )
            )
            add(_row("---", "--:", "--:", "--:", "--:", "--:", "--:"))
            for r in _all(records, "sample", model=label):
                add(
                    _row(
                        f"sample, {r['concurrency']} client(s)",
                        _n(r["requests"]),
                        _n(r["tokens_per_s"]),
                        f"{r['latency_p50_s']:.3f} s",
                        f"{r['latency_p99_s']:.3f} s",
                        "–",
                        f"{_n(r.get('rss_max_mb'))} MiB",
                    )
                )
            for r in _all(records, "score", model=label):
                bound = (
                    f"{r['pct_of_gemm_bound']:.1f}% of {r['gemm_bound_tokens_per_s']:,.0f}"
                    if r.get("pct_of_gemm_bound") is not None
                    else "–"
                )
                add(
                    _row(
                        f"score, batch {r['batch_size']} ({_n(r['sentences_per_s'])} sentences/s)",
                        _n(r["requests"]),
                        _n(r["tokens_per_s"]),
                        f"{r['latency_p50_s']:.3f} s",
                        f"{r['latency_p99_s']:.3f} s",
                        bound,
                        f"{_n(r.get('rss_max_mb'))} MiB",
                    )
                )
            add("")
            add(
                f"Aggregate sampling rate over one stream: 8 clients {s['speedup_8']}x, "
                f"32 clients **{s['speedup_32']}x**, 64 clients {s['speedup_64']}x."
            )
            add("")
        mems = _all(records, "memory")
        if mems:
            add("### Server memory (resident set, VmRSS of the server process)")
            add("")
            add(
                _row(
                    "model",
                    "idle, model loaded",
                    "max under load",
                    "idle after load",
                    "high-water mark (VmHWM)",
                )
            )
            add(_row("---", "--:", "--:", "--:", "--:"))
            for r in mems:
                add(
                    _row(
                        r["model"],
                        f"{_n(r['rss_idle_loaded_mb'])} MiB",
                        f"{_n(r['rss_under_load_max_mb'])} MiB",
                        f"{_n(r['rss_idle_after_load_mb'])} MiB",
                        f"{_n(r['rss_hwm_mb'])} MiB",
                    )
                )
            add("")

    nb, ctc, beam = (_find(records, b) for b in ("asr_nbest", "asr_ctc", "beam_states"))
    if nb or ctc or beam:
        add("## Inside a decoder: word error rate against KenLM (bench/asr.py)")
        add("")
        add("Fortunes' test sentences made into n-best lists and CTC posteriors by the "
            "noise models of `bench/asr.py`; each system's weights tuned on validation "
            "sentences.")  # fmt: skip
        add("")
        add(_row("task", "no LM", "KenLM 5-gram", "rnnlm word model", "rnnlm / KenLM", "oracle",
                 "test data"))  # fmt: skip
        add(_row("---", "--:", "--:", "--:", "--:", "--:", "---"))
        for r, what, data_text in (
            (nb, "n-best rescoring", lambda r: f"{r['utterances_test']} utterances, "
             f"{r['hypotheses_test']} hypotheses, {r['reference_words_test']} words"),
            (ctc, "pyctcdecode CTC", lambda r: f"{r['sentences_test']} sentences, "
             f"{r['reference_words_test']} words, beam {r['beam_width']}"),
        ):  # fmt: skip
            if r:
                w = r["wer"]
                add(_row(what, *(f"{100 * w[k]:.2f}%" for k in ("none", "kenlm", "rnnlm")),
                         f"{r['rnnlm_to_kenlm']:.3f}x", f"{100 * w['oracle']:.2f}%",
                         data_text(r)))  # fmt: skip
        add("")
        if beam:
            add(f"Beam-search states: {beam['states']} states of the word model, "
                f"{beam['ms_per_round']:.2f} ms a step ({beam['states_per_s']:,.0f} states/s), "
                f"{beam['pct_of_gemm_bound']:.1f}% of the GEMM-bound "
                f"{beam['gemm_bound_states_per_s']:,.0f} states/s "
                f"({beam['gemm_gflops_1_thread']:.1f} GFLOP/s on one thread).")  # fmt: skip
            add("")

    errors = _all(records, "error")
    if errors:
        add("## Failed stages")
        add("")
        for e in errors:
            add(f"- **{e['stage']}**: {e['message'].splitlines()[0]}")
        add("")
    add("## Reproduce")
    add("")
    add("```sh")
    add("make bench                      # this summary; word runs 240 s, char/sentencepiece 120 s")
    add("make bench-quality              # the quality stages, 600 s per training run (~120 min)")
    add("BENCH_BUDGET=600 make bench     # 600 s word runs, 300 s char/sentencepiece")
    add("python bench/run.py --help      # stages, budgets, --only")
    add("```")
    add("")
    return "\n".join(L)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("results", nargs="?", type=Path, default=Path("bench/results.jsonl"))
    p.add_argument("-o", "--output", type=Path, default=None, help="default: stdout")
    args = p.parse_args()
    lines = args.results.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]  # JSON lines only
    records = [r for r in records if r.get("bench") != "goal"]  # judged again, here
    records += goals(records)
    text = render(records)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
