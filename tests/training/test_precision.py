import json
from pathlib import Path

import pytest
import torch

from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.errors import RnnlmError
from rnnlm.training.corpus import CorpusOptions, build_corpus
from rnnlm.training.precision import native_bf16, uses_bf16
from rnnlm.training.state import resume_config
from rnnlm.training.train import TrainConfig, train

SMALL = dict(hidden=48, embedding=16, layers=1, batch_size=16, eval_every=20, warmup=10, lr=0.01)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "char"
    build_corpus([text_file], out, CorpusOptions(seed=1))
    return out


def _cpu_says(monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)


CPUS = [(False, False, False), (True, False, True), (False, True, True)]


@pytest.mark.parametrize(("amx", "avx512_bf16", "want"), CPUS)
def test_auto_is_bf16_only_where_the_cpu_multiplies_it_natively(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, want: bool
) -> None:
    _cpu_says(monkeypatch, amx, avx512_bf16)
    assert native_bf16(CPU) is want
    assert uses_bf16("auto", CPU) is want
    # Named ones do what they say, whatever the CPU.
    assert uses_bf16("bf16", CPU) is True
    assert uses_bf16("fp32", CPU) is False


def test_a_torch_without_the_checks_keeps_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert uses_bf16("auto", CPU) is False


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto"):
        uses_bf16("fp16", CPU)


def test_a_bf16_run_learns_and_saves_a_float32_model(tmp_path: Path, corpus: Path) -> None:
    # Where the CPU lacks native bf16 autocast still runs (converted in software): anywhere.
    summary = train(TrainConfig(max_steps=120, precision="bf16", ngram_order=0, **SMALL), corpus,
                    tmp_path / "run", progress=False)  # fmt: skip
    assert summary["precision"] == "bf16"
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"] - 0.3  # as fp32 does (test_train.py)
    best = load_checkpoint(tmp_path / "run/best")
    assert all(p.dtype == torch.float32 for p in best.model.parameters())
    assert best.config["training"]["config"]["precision"] == "bf16"
    # It scores as any model does: the test figure is the engine's, in float32.
    result = Engine(best).score_batch(["the cat"])[0]
    assert result.logprob < 0 and result.num_tokens == 8


def test_fp32_and_bf16_runs_start_from_the_same_weights_and_end_close(
    tmp_path: Path, corpus: Path
) -> None:
    # The same seed, data and steps: the products' rounding is the only difference, so
    # the two ends are near each other (a bf16 run gone wrong, e.g. a state carried in
    # bf16 or a loss in bf16, ends far off or not at all).
    ends = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(max_steps=40, precision=precision, ngram_order=0, **SMALL)
        ends[precision] = train(cfg, corpus, tmp_path / precision, progress=False)
    fp32, bf16 = ends["fp32"]["best_valid_ppl"], ends["bf16"]["best_valid_ppl"]
    assert abs(bf16 - fp32) / fp32 < 0.1


def test_auto_is_recorded_as_what_it_chose_and_resumes_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, corpus: Path
) -> None:
    _cpu_says(monkeypatch, amx=True, avx512_bf16=False)
    out = tmp_path / "run"
    summary = train(TrainConfig(max_steps=10, precision="auto", ngram_order=0, **SMALL), corpus,
                    out, progress=False)  # fmt: skip
    assert summary["precision"] == "bf16"
    state = out / "latest/trainer_state.json"
    saved = json.loads(state.read_text())
    assert saved["config"]["precision"] == "bf16"
    # On a machine without native bf16 the run resumes as it began, not as `auto` would.
    _cpu_says(monkeypatch, amx=False, avx512_bf16=False)
    assert resume_config(out, TrainConfig(), set()).precision == "bf16"
    # A run saved before the setting existed multiplied in fp32, and resumes so.
    del saved["config"]["precision"]
    state.write_text(json.dumps(saved))
    assert resume_config(out, TrainConfig(), set()).precision == "fp32"
    with pytest.raises(RnnlmError, match="--precision bf16 differs from the run being resumed"):
        resume_config(out, TrainConfig(precision="bf16"), {"precision"})
