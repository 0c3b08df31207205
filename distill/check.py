"""`distill check`: load the packaged teacher, build a 2-layer student, print parameter counts and a
parity check against transformers (the foundation's smoke test)."""

from __future__ import annotations


def check() -> None:
    import torch
    import transformers

    from distill.models.hub import from_pretrained, load_tokenizer, minilm_l6_path
    from distill.models.student import count_parameters, student_from_teacher

    path = minilm_l6_path()
    teacher = from_pretrained(path, task="base")
    student = student_from_teacher(teacher, layers=[0, 5])
    tok = load_tokenizer(path)
    for name, model in (("teacher (all-MiniLM-L6-v2)", teacher), ("student (layers 0, 5)", student)):
        n = count_parameters(model)
        print(f"{name:28s} {model.config.num_hidden_layers} layers  {n['total']:>11,} params "
              f"({n['non_embedding']:,} outside embeddings)")
    batch = tok(["a gripping, beautifully shot film.", "dull."], padding=True, return_tensors="pt")
    hf = transformers.BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        ours = teacher(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        ref = hf(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    print(f"parity vs transformers.BertModel: max |diff| = {(ours - ref)[real].abs().max().item():.2e}")
