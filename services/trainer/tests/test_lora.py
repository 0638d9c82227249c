"""The fine-tune's model preparation (services.trainer.lora), on the packaged tiny model: no service."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from archloop.basemodel import load_base
from services.trainer.lora import without_base_dropout
from services.trainer.spec import TARGET_MODULES


def _lora(model, dropout: float):
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=TARGET_MODULES["gpt2"],
                        task_type="CAUSAL_LM", fan_in_fan_out=True)  # fmt: skip
    return get_peft_model(model, config)


def test_the_base_models_dropout_is_off_and_loras_is_kept() -> None:
    model, _, _ = load_base("", "cpu")
    before = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert before and all(p == 0.1 for p in before)  # GPT-2's attention, residual and embedding dropout
    assert without_base_dropout(model) == len(before)
    wrapped = _lora(model, 0.05)
    kept = [(n, m.p) for n, m in wrapped.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert kept and all("lora_dropout" in name and p == 0.05 for name, p in kept)
    assert len(kept) == 4 * model.config.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block


def test_without_any_dropout_a_training_forward_is_deterministic() -> None:
    model, _, _ = load_base("", "cpu")
    ids = torch.randint(5, 4000, (1, 64))
    model.train()
    torch.manual_seed(0)
    noisy = [model(input_ids=ids).logits for _ in range(2)]
    assert not torch.equal(noisy[0], noisy[1])  # GPT-2's own dropout draws new masks each time
    without_base_dropout(model)
    wrapped = _lora(model, 0.0)
    wrapped.train()
    first, second = (wrapped(input_ids=ids).logits for _ in range(2))
    assert torch.equal(first, second)


def test_bf16_autocast_only_where_the_cpu_has_it_and_the_loss_agrees_with_fp32(tmp_path) -> None:
    from services.trainer import precision

    for flags, native in (
        ("fpu avx512f avx512_bf16 vaes", True),
        ("fpu amx_bf16", True),
        ("fpu avx2", False),
    ):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert precision.native_bf16(tmp_path / "cpuinfo") is native
    assert not precision.native_bf16(tmp_path / "missing")

    model, _, _ = load_base("", "cpu")
    ids = torch.randint(5, 4000, (1, 300))
    batch = (ids, ids.clone(), torch.ones_like(ids))
    model.train()
    forced = precision.choose("bf16", "cpu", model, *batch)  # the check runs whatever the CPU
    assert forced.autocast == "bf16" and model.training  # its train/eval mode is given back
    assert abs(forced.loss_bf16 - forced.loss_fp32) <= precision.PARITY_TOLERANCE * forced.loss_fp32
    assert precision.choose("off", "cpu", model, *batch).autocast == "off"
    assert precision.choose("bf16", "cuda", model, *batch).autocast == "off"
    auto = precision.choose("auto", "cpu", model, *batch)
    assert auto.autocast == ("bf16" if precision.native_bf16() else "off")


def test_the_answer_loss_equals_the_models_own_loss_over_the_labelled_tokens() -> None:
    from services.trainer.data import Example, collate
    from services.trainer.lora import answer_loss

    model, tokenizer, _ = load_base("", "cpu")
    model.eval()
    short, long = torch.randint(5, 4000, (120,)).tolist(), torch.randint(5, 4000, (200,)).tolist()
    batch = [Example(short, [-100] * 70 + short[70:]), Example(long, [-100] * 90 + long[90:])]
    ids, labels, mask = collate(batch, tokenizer.pad_token_id, "cpu")  # padded, as a batch of 2 is
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        assert torch.allclose(answer_loss(model, ids, labels, mask), expected, atol=1e-5)
