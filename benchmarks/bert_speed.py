"""Our BERT vs transformers' BERT, same weights, same process, interleaved repeats.

Prints, for batch 32 x 128 on the all-MiniLM-L6-v2 config (6 layers, hidden 384, 12 heads):
  * inference without maps (both on SDPA),
  * one training step (forward + backward + AdamW) with hidden states and attention maps requested
    (transformers must use its eager attention for maps; ours uses its explicit path),
  * one plain training step, logits only (what a logits-KD student runs; transformers on SDPA, whose
    CPU dropout draws per element; ours on its cheaper CPU dropout, ``distill.models.ops.dropout``),
as median times and ratios. Last line is JSON: {"infer_speedup": x, "train_maps_speedup": y,
"train_speedup": z} (>1 means ours is faster).

    python benchmarks/bert_speed.py [--batch 32] [--seq 128] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import transformers

from distill.models.heads import BertForSequenceClassification
from distill.models.hub import load_config, minilm_l6_path


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def same_weights(config):
    """transformers' BERT on SDPA (inference), eager (maps), SDPA (plain training) and ours, one set of weights."""
    hf_infer = transformers.BertForSequenceClassification(config).eval()  # default: sdpa
    config_eager = transformers.BertConfig(**config.to_dict())
    config_eager._attn_implementation = "eager"
    hf_train = transformers.BertForSequenceClassification(config_eager)
    hf_plain = transformers.BertForSequenceClassification(config)  # sdpa
    ours = BertForSequenceClassification(config)
    for model in (hf_train, hf_plain, ours):
        model.load_state_dict(hf_infer.state_dict(), strict=True)
    return hf_infer, hf_train, hf_plain, ours


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    config = load_config(Path(minilm_l6_path()), num_labels=2)
    hf_infer, hf_train, hf_plain, ours = same_weights(config)

    ids = torch.randint(1000, config.vocab_size, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    mask[: args.batch // 2, args.seq * 3 // 4 :] = 0  # half the batch padded
    labels = torch.randint(0, 2, (args.batch,))

    @torch.inference_mode()
    def infer_ours():
        ours.eval()(ids, mask)

    @torch.inference_mode()
    def infer_hf():
        hf_infer(input_ids=ids, attention_mask=mask)

    def step(model, opt, is_ours, maps=True):
        model.train()
        asks = {"output_hidden_states": True, "output_attentions": True} if maps else {}
        out = model(ids, mask, **asks) if is_ours else model(input_ids=ids, attention_mask=mask, **asks)
        loss = torch.nn.functional.cross_entropy(out.logits, labels)
        if maps:  # a loss that reads every requested tensor, so their backward runs as in distillation
            loss = loss + sum(h.pow(2).mean() for h in out.hidden_states) + sum(a.pow(2).mean() for a in out.attentions)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opt_hf = torch.optim.AdamW(hf_train.parameters(), lr=1e-5)
    opt_plain = torch.optim.AdamW(hf_plain.parameters(), lr=1e-5)
    for _ in range(2):  # warm-up both
        infer_ours(), infer_hf()
        step(ours, opt_ours, True), step(hf_train, opt_hf, False)
        step(ours, opt_ours, True, maps=False), step(hf_plain, opt_plain, False, maps=False)

    t_inf_o, t_inf_h, t_tr_o, t_tr_h, t_pl_o, t_pl_h = [], [], [], [], [], []
    for _ in range(args.repeats):  # interleave so machine noise hits both alike
        t_inf_o.append(median_time(infer_ours, 1))
        t_inf_h.append(median_time(infer_hf, 1))
        t_tr_o.append(median_time(lambda: step(ours, opt_ours, True), 1))
        t_tr_h.append(median_time(lambda: step(hf_train, opt_hf, False), 1))
        t_pl_o.append(median_time(lambda: step(ours, opt_ours, True, maps=False), 1))
        t_pl_h.append(median_time(lambda: step(hf_plain, opt_plain, False, maps=False), 1))
    med = statistics.median
    infer = med(t_inf_h) / med(t_inf_o)
    train = med(t_tr_h) / med(t_tr_o)
    plain = med(t_pl_h) / med(t_pl_o)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"threads {torch.get_num_threads()}, batch {args.batch} x {args.seq}, MiniLM-L6 config")
    print(f"inference, no maps      ours {med(t_inf_o) * 1e3:8.1f} ms   transformers {med(t_inf_h) * 1e3:8.1f} ms"
          f"   speed-up {infer:.2f}x")
    print(f"train step, hidden+maps ours {med(t_tr_o) * 1e3:8.1f} ms   transformers {med(t_tr_h) * 1e3:8.1f} ms"
          f"   speed-up {train:.2f}x")
    print(f"train step, logits only ours {med(t_pl_o) * 1e3:7.1f} ms   transformers {med(t_pl_h) * 1e3:8.1f} ms"
          f"   speed-up {plain:.2f}x")
    print(json.dumps({"infer_speedup": round(infer, 3), "train_maps_speedup": round(train, 3),
                      "train_speedup": round(plain, 3)}))


if __name__ == "__main__":
    main()
