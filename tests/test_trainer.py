"""transformers' Trainer with NOLA as a PEFT method (get_peft_model with NolaConfig) on a tiny
Llama, with and without gradient checkpointing (both use_reentrant settings): the loss goes
down, only the coefficients change, checkpointing gives the training steps plain backward gives,
and the folder save_model writes loads back bit for bit."""

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from adapter_models import tiny_llama  # noqa: E402

from nola_kernels.peft import NolaConfig  # noqa: E402

CONFIG = dict(r=2, num_basis=16, seed=3, target_modules=["q_proj", "v_proj"])
SAMPLES, TOKENS = 8, 8


def samples():
    ids = torch.randint(0, 64, (SAMPLES, TOKENS), generator=torch.Generator().manual_seed(2))
    return [{"input_ids": row, "labels": row} for row in ids]


def loss_on_samples(model):
    ids = torch.stack([sample["input_ids"] for sample in samples()])
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def trained(folder, use_reentrant=None):
    """A PeftModel after 6 Trainer steps; use_reentrant None: no gradient checkpointing."""
    model = tiny_llama().train()
    if use_reentrant is not None:
        # transformers 5 renamed gradient_checkpointing_enable; the old name warns.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model = peft.get_peft_model(model, NolaConfig(**CONFIG))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    start = loss_on_samples(model)
    args = transformers.TrainingArguments(
        output_dir=str(folder),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=0.3,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=samples())
    trainer.train()
    trainer.save_model(str(folder / "adapter"))
    return model.eval(), before, start


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("plain"))


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_trainer_with_gradient_checkpointing(plain, use_reentrant, tmp_path):
    model, before, start = trained(tmp_path, use_reentrant)
    assert model.base_model.model.is_gradient_checkpointing
    after = loss_on_samples(model)
    assert after < start - 0.05, (start, after)

    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    coefficient_names = {name for name in before if ".adapters." in name}
    assert changed == coefficient_names and len(coefficient_names) == 2 * 2 * 2

    # Checkpointing recomputes the same forward: the same steps as plain backward, within rounding.
    reference = dict(plain[0].named_parameters())
    for name in coefficient_names:
        torch.testing.assert_close(dict(model.named_parameters())[name], reference[name], rtol=1e-5, atol=1e-6)

    loaded = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter")
    ids = torch.stack([sample["input_ids"] for sample in samples()])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_trainer_without_checkpointing_trains_only_the_coefficients(plain):
    model, before, start = plain
    assert loss_on_samples(model) < start - 0.05
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {name for name in before if ".adapters." in name}
