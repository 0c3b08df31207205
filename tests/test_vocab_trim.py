"""Vocabulary trimming: identical predictions on the trimmed-for texts, [UNK] for unseen words,
embedding rows and tokenizer ids remapped together, and the result saves and reloads."""

import pytest
import torch
import transformers

from distill import evaluate as ev
from distill.data.tokenize import read_trained_tokens, write_trained_tokens
from distill.errors import DistillError
from distill.models.hub import from_pretrained, load_tokenizer, minilm_l6_path, save_pretrained
from distill.vocab_trim import trim_vocab, write_vocab
from tests.export_helpers import SPECIALS, tiny_model, tiny_tokenizer

CORPUS = ["the film was good", "the plot is not funny", "playing and watched slowly", "it was a great film"]


def logits(model, tokenizer, texts):
    batch = ev.pad_rows([dict(zip(enc, v)) for enc in [tokenizer(texts)] for v in zip(*enc.values())])
    return ev.torch_forward(model)(batch), batch


@pytest.mark.parametrize("task", ["sequence", "token"])
def test_identical_predictions_and_unk_for_unseen(task):
    tok, model = tiny_tokenizer(), tiny_model(task, initializer_range=0.2)
    small, small_tok, report = trim_vocab(model, tok, CORPUS, check_texts=["the movie was boring"])
    used = {t for text in CORPUS for t in tok.tokenize(text)}  # play ##ing watch ##ed slow ##ly ...
    assert {"##ing", "##ed", "##ly"} <= used
    assert report["vocab_before"] == len(tok) and report["vocab_after"] == len(used) + len(SPECIALS)
    assert small.config.vocab_size == report["vocab_after"] == small.bert.embeddings.word_embeddings.num_embeddings
    H = model.config.hidden_size
    assert report["bytes_saved"] == (len(tok) - len(small_tok)) * H * 4 and report["identical_predictions"]
    assert small_tok.tokenize(CORPUS[2]) == tok.tokenize(CORPUS[2])  # WordPiece splits the same way
    before, b1 = logits(model, tok, CORPUS)
    after, b2 = logits(small, small_tok, CORPUS)
    assert not torch.equal(b1["input_ids"], b2["input_ids"])  # ids were remapped...
    real = b1["attention_mask"].bool() if task == "token" else slice(None)
    assert torch.equal(before[real], after[real])  # ...to the same vectors: bit-identical logits
    # a word the trimmed-for texts never used ("movie", "boring") is one [UNK]; specials keep working
    enc = small_tok("the movie was boring")
    assert small_tok.convert_ids_to_tokens(enc["input_ids"]) == ["[CLS]", "the", "[UNK]", "was", "[UNK]", "[SEP]"]
    assert small_tok.pad_token_id == 0 == small.config.pad_token_id
    assert report["check_unk_rate"] == pytest.approx(2 / 4) and report["check_n_texts"] == 1


def test_trimmed_model_saves_and_reloads(tmp_path):
    tok, model = tiny_tokenizer(), tiny_model(initializer_range=0.2)
    small, small_tok, _ = trim_vocab(model, tok, CORPUS)
    save_pretrained(small, tmp_path / "m", small_tok)
    vocab = write_vocab(small_tok, tmp_path / "m").read_text().splitlines()
    assert vocab[:2] == ["[PAD]", "[UNK]"] and len(vocab) == len(small_tok)
    again, again_tok = from_pretrained(tmp_path / "m"), load_tokenizer(tmp_path / "m")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    ours, batch = logits(again, again_tok, CORPUS)
    assert torch.equal(ours, logits(model, tok, CORPUS)[0])
    assert (hf(**{k: batch[k] for k in ev.MODEL_INPUTS}).logits - ours).abs().max() <= 1e-5
    # the slow, vocab.txt-only path reads the same ids
    slow = transformers.BertTokenizerFast(vocab=str(tmp_path / "m" / "vocab.txt"), do_lower_case=True)
    assert slow(CORPUS)["input_ids"] == again_tok(CORPUS)["input_ids"]


def test_real_bert_vocab_with_accents_and_mlm_head():
    tok = load_tokenizer(minilm_l6_path())  # 30,522 WordPiece tokens, lower-casing, accent stripping
    texts = ["Café crème at the Musée d'Orsay!", "Naïve heroes; 12,345 explosions.", "the film was good"]
    model = tiny_model("sequence", vocab_size=tok.vocab_size, initializer_range=0.2)
    small, small_tok, report = trim_vocab(model, tok, texts)
    assert report["vocab_after"] < 50 and report["bytes_saved"] > 3_000_000  # ~30k rows × 32 × 4 bytes
    assert torch.equal(logits(model, tok, texts)[0], logits(small, small_tok, texts)[0])
    mlm = tiny_model("mlm", vocab_size=tok.vocab_size)
    small_mlm, _, _ = trim_vocab(mlm, tok, texts)
    head = small_mlm.cls.predictions
    assert head.decoder.weight is small_mlm.bert.embeddings.word_embeddings.weight  # still tied
    assert head.bias.shape == (report["vocab_after"],)


def test_trim_errors():
    with pytest.raises(DistillError, match="needs the training texts"):
        trim_vocab(tiny_model(), tiny_tokenizer(), [])
    with pytest.raises(DistillError, match="not in the tokenizer"):
        trim_vocab(tiny_model(), tiny_tokenizer(), CORPUS, keep_tokens=["zebra"])


def test_trained_tokens_kept_most_frequent_first_up_to_vocab_size(tmp_path):
    """A student trained on augmented rows learned their words too: trimming keeps them (``trained``: the
    run's token counts), the most frequent first up to ``max_vocab``, and the training texts stay bit-exact."""
    tok, model = tiny_tokenizer(), tiny_model(initializer_range=0.2)
    base = trim_vocab(model, tok, CORPUS)[2]["vocab_after"]
    vocab = tok.get_vocab()
    # a variant's words: "movie" 5 times, "boring" twice, "dull" never (count 0 is not a trained row)
    counts = {vocab["movie"]: 5, vocab["boring"]: 2, vocab["dull"]: 0, vocab["the"]: 9}
    write_trained_tokens(tmp_path, [[vocab["movie"]] * 5 + [vocab["the"]] * 9, [vocab["boring"]] * 2])
    assert read_trained_tokens(tmp_path) == {i: n for i, n in counts.items() if n}
    check = ["the movie was boring"]
    one, one_tok, report = trim_vocab(model, tok, CORPUS, check_texts=check, trained=counts, max_vocab=base + 1)
    assert report["vocab_after"] == base + 1 and report["trained_extra"] == 1 and report["identical_predictions"]
    assert one_tok.convert_ids_to_tokens(one_tok(check[0])["input_ids"]) == \
        ["[CLS]", "the", "movie", "was", "[UNK]", "[SEP]"]
    assert torch.equal(logits(one, one_tok, CORPUS)[0], logits(model, tok, CORPUS)[0])
    every, every_tok, report = trim_vocab(model, tok, CORPUS, check_texts=check, trained=counts, max_vocab=base + 5)
    assert report["vocab_after"] == base + 2 and report["trained_extra"] == 2 and report["check_unk_rate"] == 0
    # the kept rows are the trained rows: the check text scores as it did with the whole vocabulary
    assert torch.equal(logits(every, every_tok, check)[0], logits(model, tok, check)[0])
    # no max_vocab: the training texts' tokens alone, as before a run wrote its counts
    assert trim_vocab(model, tok, CORPUS, trained=counts)[2]["vocab_after"] == base


def test_trained_tokens_errors(tmp_path):
    tok, model = tiny_tokenizer(), tiny_model()
    base = trim_vocab(model, tok, CORPUS)[2]["vocab_after"]
    with pytest.raises(DistillError, match=f"export.vocab_size={base - 1} is below the {base} tokens the training "
                       f"split uses; set it to at least {base}, or to null to keep them alone"):
        trim_vocab(model, tok, CORPUS, max_vocab=base - 1)
    with pytest.raises(DistillError, match="export.vocab_size='many': give a number of tokens"):
        trim_vocab(model, tok, CORPUS, max_vocab="many")
    assert read_trained_tokens(tmp_path) is None  # a model trained elsewhere: the training texts alone
    (tmp_path / "trained_tokens.json").write_text("[1, 2]")
    with pytest.raises(DistillError, match="not a token-count file distill wrote; delete it"):
        read_trained_tokens(tmp_path)
