import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaTokenizerFast,
)

from distill.data.sources import tiny


def roberta_teacher(out, task="sequence", steps=150, seed=0):
    """A tiny RoBERTa with its own byte-level BPE vocabulary (trained here on the tiny corpus), fine-tuned
    on the tiny train split for ``steps`` steps: a teacher of another architecture and tokenizer."""
    torch.manual_seed(seed)
    data = tiny(task)
    train = data.splits["train"]
    texts = list(train["text"]) if task == "sequence" else [" ".join(w) for w in train["tokens"]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=[
        "<s>", "<pad>", "</s>", "<unk>", "<mask>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                     unk_token="<unk>", mask_token="<mask>", model_max_length=128,
                                     add_prefix_space=task == "token")
    labels = dict(enumerate(data.label_names))
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=1, type_vocab_size=1,
                           id2label=labels, label2id={v: k for k, v in labels.items()})
    model = (RobertaForSequenceClassification if task == "sequence" else RobertaForTokenClassification)(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    columns = train.to_dict()  # plain lists: a datasets select() per step cost more than the step
    for step in range(steps):
        rows = {k: [v[(step * 16 + i) % len(train)] for i in range(16)] for k, v in columns.items()}
        if task == "sequence":
            enc = tokenizer(rows["text"], padding=True, return_tensors="pt")
            target = torch.tensor(rows["label"])
        else:
            enc = tokenizer(rows["tokens"], is_split_into_words=True, padding=True, return_tensors="pt")
            target = torch.full(enc["input_ids"].shape, -100)
            for i, tags in enumerate(rows["tags"]):
                seen = set()
                for p, w in enumerate(enc.word_ids(i)):
                    if w is not None and w not in seen:
                        seen.add(w)
                        target[i, p] = tags[w]
        loss = model(**enc, labels=target).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
