"""Quick end-to-end checks of the three architectures (properties live in test_nn/test_models)."""

import torch

from scratchformer.models import GPT, GPTConfig


def test_gpt_logits_depend_only_on_the_past():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, d_model=16, n_head=2, n_layer=2, max_len=16)).eval()
    x = torch.randint(0, 11, (2, 8))
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 11
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-3)
