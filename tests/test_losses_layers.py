"""Golden values for the layer losses: hidden states, attention maps, MiniLM relations.

Every reference below loops over real positions one by one in float64 (no masks, no broadcasting),
while the inputs hold large garbage at padded positions: a loss that reads padding fails here.
"""

import math

import pytest
import torch

from distill.errors import DistillError
from distill.losses.attention import AttentionKL, AttentionMSE
from distill.losses.hidden import HiddenCosine, HiddenMSE, PatientKD
from distill.losses.relation import MiniLMRelation
from distill.outputs import ModelOutputs
from tests.conftest import tiny_config

TOL = 1e-6
B, T = 3, 5
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
REAL = [(b, i) for b in range(B) for i in range(T) if MASK[b, i]]
N = len(REAL)


def states(g, *shape):
    """Standard normal noise in float64."""
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def garbage_hidden(g, width, layers):
    """layers + 1 hidden states (B, T, width), padded positions hold large garbage."""
    hs = []
    for _ in range(layers + 1):
        h = states(g, B, T, width)
        hs.append(torch.where(MASK[..., None].bool(), h, 100 * states(g, B, T, width)))
    return tuple(hs)


def garbage_maps(g, heads, layers):
    """layers attention maps (B, heads, T, T): softmax over real keys at real rows, garbage elsewhere."""
    keys = MASK[:, None, None, :].bool()
    rows = MASK[:, None, :, None].bool()
    maps = []
    for _ in range(layers):
        p = torch.softmax(states(g, B, heads, T, T).masked_fill(~keys, -math.inf), -1)
        maps.append(torch.where(rows & keys, p, torch.rand(B, heads, T, T, generator=g, dtype=torch.float64)))
    return tuple(maps)


def cfg(layers, width, heads=2):
    return tiny_config(num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads)


def set_up(loss, student_config, teacher_config):
    loss.setup(student_config, teacher_config)
    return loss.double()  # the projection in float64, for 1e-6 against the float64 reference


def project(loss, h):
    p = loss.projection
    return h if p is None else p.weight.detach() @ h + p.bias.detach()


# --- hidden states -------------------------------------------------------------------------------

def test_hidden_mse_by_hand():
    zero = torch.zeros(1, 2, 2)
    hs = (zero, torch.tensor([[[1.0, 2.0], [50.0, 50.0]]]))  # second token is padding
    ht = (zero, torch.zeros(1, 2, 2))
    loss = HiddenMSE(layer_map="uniform")
    loss.setup(cfg(1, 2), cfg(1, 2))
    batch = {"attention_mask": torch.tensor([[1, 0]])}
    assert abs(loss(ModelOutputs(hidden_states=hs), ModelOutputs(hidden_states=ht), batch).item() - 2.5) < TOL


@pytest.mark.parametrize("widths", [(6, 6), (4, 6)], ids=["same-width", "projected"])
def test_hidden_mse_and_cosine_golden_with_padding(widths):
    g = torch.Generator().manual_seed(0)
    ws, wt = widths
    hs, ht = garbage_hidden(g, ws, 2), garbage_hidden(g, wt, 4)
    batch = {"attention_mask": MASK}
    mse = set_up(HiddenMSE(layer_map="uniform"), cfg(2, ws), cfg(4, wt))
    cos = set_up(HiddenCosine(layer_map=[[1, 2], [2, 4]]), cfg(2, ws), cfg(4, wt))
    assert mse.layer_map.pairs == ((0, 0), (1, 2), (2, 4))
    assert (mse.projection is None) == (ws == wt)
    want_mse = want_cos = 0.0
    for i, j in mse.layer_map.pairs:
        want_mse += sum(((project(mse, hs[i][b, k]) - ht[j][b, k]) ** 2).sum().item() for b, k in REAL) / (N * wt)
    for i, j in cos.layer_map.pairs:
        for b, k in REAL:
            s, t = project(cos, hs[i][b, k]), ht[j][b, k]
            want_cos += (1 - (s @ t / (s.norm() * t.norm())).item()) / N
    s_out, t_out = ModelOutputs(hidden_states=hs), ModelOutputs(hidden_states=ht)
    assert abs(mse(s_out, t_out, batch).item() - want_mse) < TOL
    assert abs(cos(s_out, t_out, batch).item() - want_cos) < TOL


def test_patient_kd_golden_on_normalised_cls():
    g = torch.Generator().manual_seed(1)
    hs, ht = garbage_hidden(g, 4, 2), garbage_hidden(g, 6, 4)
    pkd = set_up(PatientKD(), cfg(2, 4), cfg(4, 6))
    assert pkd.layer_map.pairs == ((1, 2), (2, 4))  # uniform without the embeddings
    want = 0.0
    for i, j in pkd.layer_map.pairs:
        for b in range(B):
            s, t = project(pkd, hs[i][b, 0]), ht[j][b, 0]
            want += ((s / s.norm() - t / t.norm()) ** 2).sum().item() / B
    got = pkd(ModelOutputs(hidden_states=hs), ModelOutputs(hidden_states=ht), {"attention_mask": MASK})
    assert abs(got.item() - want) < TOL


def test_projection_is_a_trained_parameter_of_the_loss():
    loss = HiddenMSE()
    assert list(loss.parameters()) == []
    loss.setup(cfg(2, 4), cfg(4, 6))
    assert [tuple(p.shape) for p in loss.parameters()] == [(6, 4), (6,)]
    projection = loss.projection
    loss.setup(cfg(2, 4), cfg(4, 6))  # set up again (a resumed run): the trained projection stays
    assert loss.projection is projection


# --- attention maps ------------------------------------------------------------------------------

def test_attention_mse_and_kl_golden_with_padding():
    g = torch.Generator().manual_seed(2)
    heads = 3
    ms, mt = garbage_maps(g, heads, 2), garbage_maps(g, heads, 4)
    mse = set_up(AttentionMSE(layer_map="uniform"), cfg(2, 6, heads), cfg(4, 6, heads))
    kl = set_up(AttentionKL(layer_map="last"), cfg(2, 6, heads), cfg(4, 6, heads))
    assert mse.layer_map.pairs == ((1, 2), (2, 4))  # no layer 0 for attention
    want_mse = want_kl = 0.0
    for i, j in mse.layer_map.pairs:
        cells = sum(int(MASK[b].sum()) ** 2 for b in range(B)) * heads
        for b, q in REAL:
            for k in range(T):
                if MASK[b, k]:
                    diff = ms[i - 1][b, :, q, k] - mt[j - 1][b, :, q, k]  # (heads,)
                    want_mse += sum(d * d for d in diff.tolist()) / cells
    for b, q in REAL:
        for h in range(heads):
            for k in range(T):
                if MASK[b, k]:
                    ps, pt = ms[1][b, h, q, k].item(), mt[3][b, h, q, k].item()
                    want_kl += pt * math.log(pt / ps) / (heads * N)
    s_out, t_out = ModelOutputs(attentions=ms), ModelOutputs(attentions=mt)
    assert abs(mse(s_out, t_out, {"attention_mask": MASK}).item() - want_mse) < TOL
    assert abs(kl(s_out, t_out, {"attention_mask": MASK}).item() - want_kl) < TOL


def test_attention_loss_with_other_head_counts_points_to_the_relation_loss():
    with pytest.raises(DistillError, match="student has 2 heads and the teacher 4; use distill.losses.relation"):
        AttentionMSE().setup(cfg(2, 8, 2), cfg(4, 8, 4))


# --- MiniLM relations ----------------------------------------------------------------------------

def relation_reference(qkv_s, qkv_t, pairs, relations, heads):
    """Per batch row: slice the real tokens, concatenate heads, re-split, softmax, KL — row by row."""
    letters = "qkv"
    total = 0.0
    for i, j in pairs:
        for x, y in relations:
            for b in range(B):
                n = int(MASK[b].sum())

                def rel(qkv, layer, letter, b=b, n=n):
                    v = qkv[layer - 1][letters.index(letter)][b, :, :n]  # (nh, n, d)
                    v = v.transpose(0, 1).reshape(n, -1)  # (n, H), heads concatenated
                    return v.reshape(n, heads, -1).transpose(0, 1)  # (A, n, d_r)

                xs, ys = rel(qkv_s, i, x), rel(qkv_s, i, y)
                xt, yt = rel(qkv_t, j, x), rel(qkv_t, j, y)
                rs = torch.softmax(xs @ ys.transpose(1, 2) / math.sqrt(xs.shape[-1]), -1)  # (A, n, n)
                rt = torch.softmax(xt @ yt.transpose(1, 2) / math.sqrt(xt.shape[-1]), -1)
                total += (rt * (rt / rs).log()).sum().item() / (heads * N)
    return total


def garbage_qkv(g, heads, d, layers):
    real = MASK[:, None, :, None].bool()
    return tuple(
        tuple(torch.where(real, states(g, B, heads, T, d), 100 * states(g, B, heads, T, d)) for _ in range(3))
        for _ in range(layers)
    )


@pytest.mark.parametrize("relations,relation_heads", [(["qq", "kk", "vv"], None), (["qk", "vv"], 2)])
def test_relation_golden_across_widths_and_head_counts(relations, relation_heads):
    g = torch.Generator().manual_seed(3)
    qkv_s, qkv_t = garbage_qkv(g, 2, 4, 2), garbage_qkv(g, 6, 2, 3)  # student 2×4 = 8 wide, teacher 6×2 = 12
    loss = MiniLMRelation(layer_map="uniform", relations=relations, relation_heads=relation_heads)
    loss.setup(cfg(2, 8, 2), cfg(3, 12, 6))
    assert loss.relation_heads == 2  # default: the larger head count dividing both widths (6 ∤ 8, 2 | 8, 12)
    want = relation_reference(qkv_s, qkv_t, loss.layer_map.pairs, relations, loss.relation_heads)
    got = loss(ModelOutputs(qkv=qkv_s), ModelOutputs(qkv=qkv_t), {"attention_mask": MASK})
    assert abs(got.item() - want) < TOL


def test_relation_errors():
    with pytest.raises(DistillError, match=r"relation_heads=5 must divide both hidden sizes \(student 8, teacher 12\)"):
        MiniLMRelation(relation_heads=5).setup(cfg(2, 8, 2), cfg(3, 12, 6))
    with pytest.raises(DistillError, match="pairs of q, k, v"):
        MiniLMRelation(relations=["qx"])


def test_missing_teacher_fields_say_what_to_change():
    loss = HiddenMSE()
    loss.setup(cfg(2, 6), cfg(2, 6))
    h = (torch.zeros(1, 2, 6),) * 3
    with pytest.raises(DistillError, match="teacher's hidden_states.*turn the teacher cache off"):
        loss(ModelOutputs(hidden_states=h), ModelOutputs(logits=torch.zeros(1, 2)), {})
    with pytest.raises(DistillError, match="was not set up"):
        AttentionKL()(ModelOutputs(), ModelOutputs(), {})


def test_relation_matches_attention_kl_when_it_is_the_attention_distribution():
    """qk with A_r = heads is MiniLM's attention transfer: the same number as AttentionKL on the maps."""
    g = torch.Generator().manual_seed(4)
    qkv_s, qkv_t = garbage_qkv(g, 2, 3, 1), garbage_qkv(g, 2, 3, 1)
    keys = MASK[:, None, None, :].bool()

    def maps(qkv):
        q, k, _ = qkv[0]
        return (torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(3)).masked_fill(~keys, -math.inf), -1),)

    rel = MiniLMRelation(relations=["qk"], relation_heads=2)
    att = AttentionKL()
    for loss in (rel, att):
        loss.setup(cfg(1, 6, 2), cfg(1, 6, 2))
    batch = {"attention_mask": MASK}
    a = rel(ModelOutputs(qkv=qkv_s), ModelOutputs(qkv=qkv_t), batch)
    b = att(ModelOutputs(attentions=maps(qkv_s)), ModelOutputs(attentions=maps(qkv_t)), batch)
    assert abs(a.item() - b.item()) < TOL
