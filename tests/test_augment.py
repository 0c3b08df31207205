"""Augmentation: strided masking, candidates, mention swaps, variants, gold flags, caching, the CLI path."""

import json
import logging
import os
import re
from pathlib import Path

import datasets
import pytest
import torch

from distill.data.augment import Augment, augment
from distill.data.contextual import _jobs, contextual_candidates, single_piece, whole_word_ids
from distill.data.corpus import TaskData
from distill.data.mentions import mention_bank, spans, swap
from distill.data.mlm_head import MLMFit, held_out_accuracy, masked_lm
from distill.data.neighbours import embedding_neighbours
from distill.data.sources import tiny
from distill.data.tokenize import read_trained_tokens
from distill.errors import DistillError
from distill.losses.hard import HardCrossEntropy
from distill.models.hub import load_tokenizer, minilm_l6_path
from distill.models.student import random_bert
from distill.outputs import ModelOutputs
from distill.pipeline import CONTROL
from tests import cli_run


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(minilm_l6_path())


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))


def tiny_mlm():
    torch.manual_seed(0)
    return random_bert("mlm", num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=64)


def test_strided_masking_asks_every_eligible_word_once_in_mask_every_passes(tokenizer):
    sentences = [["the", "film", "was", "dull", "and", "very", "long", "indeed"]]
    eligible = [[w != "and" for w in sentences[0]]]
    enc, positions = single_piece(tokenizer, sentences, 32)
    jobs = _jobs(enc, positions, eligible, tokenizer.mask_token_id, mask_every=3)
    assert len(jobs) == 3  # 7 eligible words, every 3rd per pass
    asked = [t[1] for _, targets in jobs for t in targets]
    assert sorted(asked) == [0, 1, 2, 3, 5, 6, 7]  # word 4 ("and") is not eligible
    for ids, targets in jobs:  # exactly the asked words are [MASK]; the others keep their ids
        masked = [t for t, i in enumerate(ids) if i == tokenizer.mask_token_id]
        assert masked == [t[2] for t in targets]
        assert all(enc["input_ids"][0][t[2]] == t[3] for t in targets)
    assert [t[1] for t in jobs[0][1]] == [0, 3, 7]  # ranks 0, 3, 6 of the eligible words


def test_multi_piece_words_are_not_asked_of_the_masked_lm(tokenizer):
    _, positions = single_piece(tokenizer, [["a", "histrionics", "film"]], 32)
    assert sorted(positions[0]) == [0, 2]  # "histrionics" is several word pieces


def test_contextual_candidates_are_whole_words_never_the_word_itself(tokenizer):
    sentences = [["the", "film", "was", "dull"], ["a", "great", "movie"]]
    eligible = [[True] * 4, [True] * 3]
    mlm = tiny_mlm()
    allowed = set(tokenizer.convert_ids_to_tokens(whole_word_ids(tokenizer).tolist()))
    for pool in (0, 20):
        found = contextual_candidates(mlm, tokenizer, sentences, eligible, top_k=5, mask_every=2, pool=pool)
        assert set(found) == {(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)}
        for (i, j), words in found.items():
            assert len(words) == 5 and sentences[i][j] not in words and set(words) <= allowed
        again = contextual_candidates(mlm, tokenizer, sentences, eligible, top_k=5, mask_every=2, pool=pool)
        assert again == found


def test_bf16_candidates_agree_with_fp32_and_are_cached_apart(tokenizer):
    """precision=bf16 autocasts the masked-LM's forwards: ≥ 90% of the fp32 top-K, in another cache entry;
    the head is fitted once, in fp32, for both (a bf16 fit collapsed on MR: held-out top-1 0.000 vs 0.168)."""
    data = tiny(rows=120)
    sentences = [t.split() for t in data.splits["train"]["text"]]
    eligible = [[w.isalpha() for w in s] for s in sentences]
    mlm = tiny_mlm()
    for pool in (0, 20):
        fp32 = contextual_candidates(mlm, tokenizer, sentences, eligible, top_k=5, mask_every=2, pool=pool)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = contextual_candidates(mlm, tokenizer, sentences, eligible, top_k=5, mask_every=2, pool=pool)
        assert bf16.keys() == fp32.keys() and len(fp32) > 500
        kept = sum(len(set(fp32[k]) & set(bf16[k])) for k in fp32) / sum(len(v) for v in fp32.values())
        assert 0.9 <= kept < 1.0, kept  # close, and not the same computation (autocast took effect)
    rows = {p: augment(data, tokenizer, _settings(precision=p), tiny_mlm).splits["train"] for p in ("no", "bf16")}
    assert len(list((Path(os.environ["DISTILL_CACHE"]) / "augment").iterdir())) == 2
    assert len(list((Path(os.environ["DISTILL_CACHE"]) / "mlm").iterdir())) == 1  # one fp32 head serves both
    assert rows["no"]["text"][:len(data.splits["train"])] == rows["bf16"]["text"][:len(data.splits["train"])]
    with pytest.raises(DistillError, match="precision='fp16': use auto, bf16 or no"):
        augment(data, tokenizer, _settings(precision="fp16"), tiny_mlm)


def test_embedding_neighbours_follow_cosine(tokenizer):
    vocab = tokenizer.get_vocab()
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(len(vocab), 16, generator=g)
    emb[vocab["dull"]] = emb[vocab["boring"]] + 0.01 * torch.randn(16, generator=g)
    assert embedding_neighbours(emb, tokenizer, {"boring"}, top_k=3)["boring"][0] == "dull"
    pieces = tokenizer("histrionics", add_special_tokens=False)["input_ids"]
    emb[vocab["drama"]] = emb[pieces].mean(0)  # a multi-piece word: the mean of its pieces
    assert embedding_neighbours(emb, tokenizer, {"histrionics"}, top_k=3)["histrionics"][0] == "drama"


def test_mentions_swap_keeps_tags_aligned():
    tags = ["B-person", "I-person", "O", "B-loc", "I-person", "O"]
    assert spans(tags) == [(0, 2, "person"), (3, 4, "loc"), (4, 5, "person")]
    bank = mention_bank([(["ann", "lee", "went", "to", "rome"], ["B-person", "I-person", "O", "O", "B-loc"]),
                         (["bob"], ["B-person"])])
    assert bank == {"person": [("ann", "lee"), ("bob",)], "loc": [("rome",)]}
    import random

    words, new_tags, swapped = swap(["ann", "lee", "flew", "to", "rome"], ["B-person", "I-person", "O", "O", "B-loc"],
                                    bank, 1.0, random.Random(0))
    assert words == ["bob", "flew", "to", "rome"] and new_tags == ["B-person", "O", "O", "B-loc"] and swapped == 1
    # a stray I- tag (IOB1-style) is kept as it is when its mention is not swapped; no B-/I- pair: never swapped
    kept = swap(["rome", "is"], ["I-loc", "O"], bank, 1.0, random.Random(0), names=frozenset({"O", "I-loc"}))
    assert kept == (["rome", "is"], ["I-loc", "O"], 0)


def test_hard_loss_skips_teacher_labelled_rows():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    out = ModelOutputs(logits=logits)
    loss = HardCrossEntropy()
    with_gold = loss(out, None, {"labels": labels, "gold": torch.tensor([1, 0, 1])})
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    assert torch.allclose(with_gold, expected)
    token = loss(ModelOutputs(logits=logits[None]), None,
                 {"labels": labels[None], "gold": torch.tensor([0]), "attention_mask": torch.ones(1, 3)})
    assert token.item() == 0.0  # a teacher-labelled token row adds nothing to the hard loss


def _settings(**changes):
    base = dict(n=3, p=0.5, top_k=4, pool=10, mask_every=2, max_length=32, mlm=MLMFit(epochs=1, train_layers=0))
    return Augment(**{**base, **changes})


def test_augment_sequence_rows_are_deterministic_flagged_and_cached(tokenizer, caplog):
    data = tiny(rows=120)
    train = data.splits["train"]
    out = augment(data, tokenizer, _settings(), tiny_mlm)
    aug = out.splits["train"]
    assert aug["gold"][:len(train)] == [1] * len(train) and set(aug["gold"][len(train):]) == {0}
    assert len(train) < len(aug) <= 4 * len(train)
    assert aug["text"][:len(train)] == train["text"]
    variants = aug["text"][len(train):]
    assert len(set(variants)) == len(variants) and not set(variants) & set(train["text"])
    held_out = set(data.splits["validation"]["text"]) | set(data.splits["test"]["text"])
    assert not set(variants) & held_out
    with caplog.at_level(logging.INFO, logger="distill.data.augment"):
        again = augment(data, tokenizer, _settings(), tiny_mlm)
    assert again.splits["train"]["text"] == aug["text"] and "cached in" in caplog.text
    other_seed = augment(data, tokenizer, _settings(seed=1), tiny_mlm).splits["train"]["text"]
    assert other_seed != aug["text"]
    control = augment(data, tokenizer, _settings(label="gold"), tiny_mlm).splits["train"]
    assert set(control["gold"]) == {1} and control["text"] == aug["text"]  # same rows, gold labels
    assert control["label"] == aug["label"]  # each variant keeps its source row's label


def _masked_or_same(source: str, variant: str) -> bool:
    """``variant`` is ``source`` with some of its words (letters only) written as [MASK]."""
    pattern = re.sub(r"[A-Za-z]+", lambda m: rf"(?:{m.group()}|\[MASK\])", re.escape(" ".join(source.split())))
    return re.fullmatch(pattern, variant) is not None


@pytest.mark.parametrize("task", ["sequence", "token"])
def test_mask_share_1_writes_every_chosen_word_as_the_mask_token(tokenizer, task):
    data = tiny(task=task, rows=80)
    train, names = data.splits["train"], data.label_names
    out = augment(data, tokenizer, _settings(mask_share=1.0, swap_mentions=0.0), tiny_mlm).splits["train"]
    n = len(train)
    sources = list(train["text"]) if task == "sequence" else [" ".join(w) for w in train["tokens"]]
    variants = out["text"][n:] if task == "sequence" else [" ".join(w) for w in out["tokens"][n:]]
    assert variants  # each is a source with some words written as [MASK], nothing else changed
    assert all(any(_masked_or_same(source, v) for source in sources) for v in variants)
    ids = tokenizer(variants)["input_ids"]  # the text [MASK] is the tokenizer's mask token
    assert all(row.count(tokenizer.mask_token_id) == v.count("[MASK]") > 0 for row, v in zip(ids, variants))
    if task == "token":
        for ws, ts in zip(out["tokens"][n:], out["tags"][n:]):  # tags aligned; only O words are masked
            assert len(ws) == len(ts) and all(names[t] == "O" for w, t in zip(ws, ts) if w == "[MASK]")
    assert set(out["gold"][n:]) == {0}


def test_mask_share_0_draws_the_variants_drawn_before_it_existed():
    """At mask_share=0 ``_replace`` makes the draws the expression before it made: sets cached before are the same."""
    import random

    from distill.data.augment import _match_case, _replace

    words = ["The", "film", "was", "dull", "and", "long", "!"]
    cands = [["a"], ["movie", "picture"], ["is"], ["slow", "flat", "tired"], [], ["lengthy", "short"], []]
    settings = _settings(p=0.6, mask_share=0.0)
    for seed in range(20):
        old, new = random.Random(seed), random.Random(seed)
        before = [_match_case(w, old.choice(c)) if c and old.random() < settings.p else w for w, c in zip(words, cands)]
        assert [_replace(w, c, settings, new, "[MASK]") for w, c in zip(words, cands)] == before
        assert old.random() == new.random()  # the stream stays in step for the draws after the words


def test_augment_token_rows_change_only_o_words_and_swap_mentions(tokenizer):
    data = tiny(task="token", rows=120)
    names = data.label_names
    out = augment(data, tokenizer, _settings(swap_mentions=1.0), tiny_mlm).splits["train"]
    n = len(data.splits["train"])
    sources = {" ".join(w): t for w, t in zip(data.splits["train"]["tokens"], data.splits["train"]["tags"])}
    persons = {" ".join(w[s:e]) for w, t in sources.items()
               for s, e, k in spans([names[i] for i in t]) if k == "person" for w in [w.split()]}
    swapped = 0
    for words, tags in zip(out["tokens"][n:], out["tags"][n:]):
        assert len(words) == len(tags)
        named = [names[t] for t in tags]
        for s, e, kind in spans(named):
            assert named[s] == f"B-{kind}"
            if kind == "person":
                assert " ".join(words[s:e]) in persons  # a mention from the training split
        swapped += 1
    assert swapped > 0 and set(out["gold"][n:]) == {0}


def test_token_rows_replace_only_words_tagged_o_whatever_its_label_id(tokenizer):
    data = tiny(task="token", rows=60)
    order = ["B-loc", "B-person", "I-person", "O"]  # "O" is not label 0
    remap = [order.index(n) for n in data.label_names]
    tags = [[remap[t] for t in ts] for ts in data.splits["train"]["tags"]]
    train = datasets.Dataset.from_dict(
        {"tokens": data.splits["train"]["tokens"], "tags": tags},
        features=datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                    "tags": datasets.List(datasets.ClassLabel(names=order))}))
    shuffled = TaskData(datasets.DatasetDict({**data.splits, "train": train}), order, "token", name="tiny-reordered")
    out = augment(shuffled, tokenizer, _settings(swap_mentions=0.0, p=1.0), tiny_mlm).splits["train"]
    n = len(train)
    entity_words = {w for ws, ts in zip(train["tokens"], train["tags"]) for w, t in zip(ws, ts) if order[t] != "O"}
    o_words = {w for ws, ts in zip(train["tokens"], train["tags"]) for w, t in zip(ws, ts) if order[t] == "O"}
    seen_o = set()
    for words, tags in zip(out["tokens"][n:], out["tags"][n:]):
        assert {w for w, t in zip(words, tags) if order[t] != "O"} <= entity_words  # entity words never replaced
        seen_o |= {w for w, t in zip(words, tags) if order[t] == "O"}
    assert seen_o - o_words  # with p=1 the O words are replaced


def test_entity_words_replaces_words_inside_mentions_too_and_keeps_tags_aligned(tokenizer):
    """entity_words=true: words inside mentions are replaced as O words are (the teacher tags the variant);
    off, no entity word changes; its default keeps the cached sets made before it (same fingerprint)."""
    from distill.data.augment import _fingerprint

    data = tiny(task="token", rows=60)
    names, train = data.label_names, data.splits["train"]
    entity_words = {w for ws, ts in zip(train["tokens"], train["tags"]) for w, t in zip(ws, ts) if names[t] != "O"}
    n = len(train)
    replaced = {}
    for flag in (False, True):
        out = augment(data, tokenizer, _settings(swap_mentions=0.0, p=1.0, entity_words=flag), tiny_mlm).splits["train"]
        assert all(len(ws) == len(ts) for ws, ts in zip(out["tokens"][n:], out["tags"][n:]))
        assert set(out["gold"][n:]) == {0}
        replaced[flag] = {w for ws, ts in zip(out["tokens"][n:], out["tags"][n:])
                          for w, t in zip(ws, ts) if names[t] != "O"} - entity_words
    assert not replaced[False] and len(replaced[True]) > 5, replaced
    assert _fingerprint(data, tokenizer, _settings(), "m", ()) == _fingerprint(
        data, tokenizer, _settings(entity_words=False), "m", ()) != _fingerprint(
        data, tokenizer, _settings(entity_words=True), "m", ())


def test_augment_errors_are_one_line(tokenizer):
    with pytest.raises(DistillError, match="n=0 must be at least 1"):
        augment(tiny(rows=40), tokenizer, _settings(n=0), tiny_mlm)
    raw = TaskData(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b"]})}), [], "raw")
    with pytest.raises(DistillError, match="sequence or token task"):
        augment(raw, tokenizer, _settings(), tiny_mlm)
    with pytest.raises(DistillError, match="batch_size=0 must be at least 1"):
        augment(tiny(rows=40), tokenizer, _settings(batch_size=0), tiny_mlm)
    with pytest.raises(DistillError, match="mlm.mlm_probability=0.0 must be in"):
        augment(tiny(rows=40), tokenizer, _settings(mlm=MLMFit(mlm_probability=0.0)), tiny_mlm)
    with pytest.raises(DistillError, match=re.escape("mask_share=1.5 must be in [0, 1]")):
        augment(tiny(rows=40), tokenizer, _settings(mask_share=1.5), tiny_mlm)
    with pytest.raises(DistillError, match="delete_span=0.5 deletes words, which a token task's tags could not follow"):
        augment(tiny(rows=40, task="token"), tokenizer, _settings(delete_span=0.5), tiny_mlm)
    with pytest.raises(DistillError, match="entity_words=true is for token tasks"):
        augment(tiny(rows=40), tokenizer, _settings(entity_words=True), tiny_mlm)
    with pytest.raises(DistillError, match=re.escape("the control (label: gold) needs entity_words=false")):
        augment(tiny(rows=40, task="token"), tokenizer, _settings(entity_words=True, label="gold"), tiny_mlm)


def small_vocab_mlm():
    from transformers import BertConfig

    from distill.models.heads import BertForMaskedLM

    return BertForMaskedLM(BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      intermediate_size=64)).eval()


@pytest.mark.parametrize("method", ["contextual", "neighbours"])
def test_either_method_refuses_a_masked_lm_of_another_vocabulary(tokenizer, method):
    # neighbours reads the embedding rows by the tokenizer's ids too: another vocabulary gives wrong words
    with pytest.raises(DistillError, match="vocabulary of 1000 tokens but the teacher's tokenizer 30522"):
        augment(tiny(rows=40), tokenizer, _settings(method=method), small_vocab_mlm)


def test_a_masked_lm_saved_with_another_vocabulary_of_the_same_size_is_refused(tokenizer, tmp_path):
    """Same size, two tokens' ids swapped: the size check passes, the saved tokenizer tells them apart."""
    from transformers import BertTokenizerFast

    tokens = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    good, bad = tokens.index("good"), tokens.index("bad")
    tokens[good], tokens[bad] = "bad", "good"
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    for name, saved in (("same", tokenizer), ("swapped", BertTokenizerFast(str(tmp_path / "vocab.txt")))):
        saved.save_pretrained(tmp_path / name)

    def saved_in(name):
        def build():
            model = tiny_mlm()
            model.config.name_or_path = str(tmp_path / name)  # as from_pretrained(DIR) sets it
            return model
        return build

    assert len(augment(tiny(rows=40), tokenizer, _settings(method="neighbours"), saved_in("same")).splits["train"]) > 40
    with pytest.raises(DistillError, match="swapped.* gives other ids than the teacher.s to the same tokens"):
        augment(tiny(rows=40), tokenizer, _settings(method="neighbours"), saved_in("swapped"))


def test_mlm_epochs_0_refuses_a_head_the_checkpoint_lacks(tokenizer):
    def headless():  # as hub.from_pretrained marks the packaged MiniLM, which ships no masked-LM head
        model = tiny_mlm()
        model.newly_initialised = ["cls.predictions.bias", "cls.predictions.transform.dense.weight"]
        return model

    with pytest.raises(DistillError, match="mlm.epochs=0 keeps the checkpoint's own masked-LM head, but this "):
        augment(tiny(rows=40), tokenizer, _settings(mlm=MLMFit(epochs=0)), headless)
    data = augment(tiny(rows=40), tokenizer, _settings(method="neighbours", mlm=MLMFit(epochs=0)), headless)
    assert len(data.splits["train"]) > 40  # neighbours asks no head: epochs=0 is fine there


def test_masked_lm_head_fit_learns_and_is_reused_from_cache(tokenizer):
    texts = list(tiny(task="raw", rows=200).splits["train"]["text"])
    fit = MLMFit(epochs=8, lr=5e-2, batch_size=32, max_length=32, train_layers=0)
    before = held_out_accuracy(tiny_mlm(), tokenizer, texts[:50], fit)
    fitted = masked_lm(tiny_mlm(), tokenizer, texts, texts[:50], fit)
    after = held_out_accuracy(fitted, tokenizer, texts[:50], fit)
    assert before < 0.01 and after > 0.04, after  # from none to the corpus's frequent words (~1/40 each)
    cached = masked_lm(tiny_mlm(), tokenizer, texts, texts[:50], fit)
    assert all(torch.equal(v, fitted.state_dict()[k]) for k, v in cached.state_dict().items())


_cli = cli_run.distill  # `distill ARGS` in this process (tests/cli_run.py)


TINY_MLM = ["augment=words", "data.augment.n=2", "data.augment.mlm.model._target_=distill.models.student.random_bert",
            "data.augment.mlm.epochs=1", "data.augment.top_k=3", "data.augment.pool=5"]
TINY_MLM_RECIPE_N = [a for a in TINY_MLM if not a.startswith("data.augment.n=")]  # the recipe's own variant count


def test_users_csv_gets_augmentation_with_no_code(tmp_path):
    rows = ["review,stars"] + [f"\"{t}\",{'good' if i % 2 else 'bad'}" for i, t in
                               enumerate(tiny(rows=80).splits["train"]["text"])]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    run = _cli("train", "data=files", f"data.train_file={tmp_path / 'train.csv'}", "data.text_column=review",
               "data.label_column=stars", "teacher=tiny", "student=tiny", "trainer.max_steps=4", *TINY_MLM,
               f"hydra.run.dir={tmp_path / 'run'}", env={"DISTILL_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr[-3000:]
    log = (tmp_path / "run" / "cli.log").read_text()
    line = next(ln for ln in log.splitlines() if "augment:" in ln)
    before, after = (int(x) for x in re.search(r"augment: (\d+) train rows -> (\d+)", line.replace(",", "")).groups())
    assert before < after <= 3 * before and "of words changed" in line
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 4


def test_token_task_cache_rows_are_as_long_as_the_longest_row(tmp_path):
    run = _cli("train", "teacher=tiny", "student=tiny", "data=tiny", "data.source.task=token", "trainer.max_steps=3",
               *TINY_MLM, f"hydra.run.dir={tmp_path / 'run'}", env={"DISTILL_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr[-3000:]
    (meta,) = (tmp_path / "run" / "teacher_cache").glob("teacher-*/meta.json")
    rows, classes = json.loads(meta.read_text())["row_shape"]
    assert classes == 4 and rows < 32  # data.max_length is 32; tiny token rows are shorter, not 512


def test_bad_augment_setting_is_one_line_from_the_cli(tmp_path):
    run = _cli("train", "teacher=tiny", "student=tiny", "data=tiny", *TINY_MLM, "data.augment.p=2",
               f"hydra.run.dir={tmp_path / 'run'}", env={"DISTILL_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == "error: data.augment.p=2.0 must be a probability in [0, 1]"


@pytest.mark.parametrize("settings, message, hint", [
    ((), "error: control=true trains a student on the augmented rows", "or drop control=true"),
    (("data.source.task=token", *TINY_MLM, "data.augment.entity_words=true"),
     "error: control=true trains the augmented rows with their source's tags, and data.augment.entity_words=true",
     "drop one of them"),
])
def test_pipeline_control_it_cannot_train_stops_before_the_teacher_stage(tmp_path, settings, message, hint):
    run = _cli("pipeline", "teacher=tiny", "student=tiny", "data=tiny", "control=true", *settings,
               f"stage_root={tmp_path / 'stages'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(message) and run.stderr.strip().endswith(hint)
    assert not (tmp_path / "stages").exists()  # nothing trained


def test_pipeline_baseline_trains_gold_rows_for_the_kd_steps_and_control_uses_gold_labels(tmp_path):
    """`distill pipeline recipe=quickstart` (the README's command, tiny models) with the control row."""
    from omegaconf import OmegaConf

    run = _cli("pipeline", "recipe=quickstart", "teacher=tiny", "student=tiny", "data.limit=48", "finetune.max_steps=2",
               *TINY_MLM, "control=true", f"stage_root={tmp_path / 'stages'}", "export.formats=[hf]",
               f"hydra.run.dir={tmp_path / 'run'}", env={"DISTILL_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr[-3000:]
    dirs = {k: Path(v) for k, v in json.loads((tmp_path / "run" / "pipeline.json").read_text()).items()}
    assert sorted(dirs) == ["baseline", "control", "distill", "teacher"]
    steps = {name: json.loads((dirs[name] / "metrics.json").read_text())["steps"] for name in dirs if name != "teacher"}
    assert steps["distill"] > 2 and steps["baseline"] == steps["distill"] == steps["control"]
    baseline, control = (OmegaConf.load(dirs[name] / "stage.yaml") for name in ("baseline", "control"))
    assert "augment" not in baseline.data or baseline.data.augment is None  # labelled rows only
    assert baseline.trainer.max_steps == steps["distill"] and control.data.augment.label == "gold"
    assert set(control.losses) == {"_target_", "hard"}  # no teacher term
    kd_log = (dirs["distill"] / "metrics.jsonl").read_text()
    assert "train/logits" in kd_log and "train/hard" in kd_log
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student (KD)", "student (no KD)", CONTROL}
    assert "student (no KD)" in report["models"][CONTROL]["mcnemar"]
    assert CONTROL in report["models"]["student (KD)"]["mcnemar"]  # what the teacher's labels add over more data
    assert CONTROL in run.stdout  # the printed table has the control row
    assert f"student (KD) vs {CONTROL}: " in run.stdout  # and the notes its paired test against the KD student
    # the KD student trained on the variants' words too; export.vocab_size=null keeps the labelled rows' tokens
    trained, gold = (set(read_trained_tokens(dirs[name] / "student")) for name in ("distill", "baseline"))
    specials = set(load_tokenizer(dirs["distill"] / "student").all_special_ids)
    base, every = len(gold | specials), len(trained | specials)
    exported = tmp_path / "run" / "export" / "hf" / "config.json"
    assert gold < trained and json.loads(exported.read_text())["vocab_size"] == base
    # `distill export run=...` with vocab_size=N: the trained tokens too, up to N in all
    for size, kept in ((base + 1, base + 1), (every + 10, every)):
        again = _cli("export", f"run={tmp_path / 'run'}", "formats=[hf]", "trim_vocab=true", f"vocab_size={size}",
                     env={"DISTILL_CACHE": str(tmp_path / "cache")})
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"({kept - base} more tokens kept from the rows the model trained on)" in again.stdout
        assert json.loads(exported.read_text())["vocab_size"] == kept
    low = _cli("export", f"run={tmp_path / 'run'}", "formats=[hf]", "trim_vocab=true", f"vocab_size={base - 1}",
               env={"DISTILL_CACHE": str(tmp_path / "cache")})
    assert low.returncode == 1 and low.stderr.strip().splitlines()[-1] == (
        f"error: export.vocab_size={base - 1} is below the {base} tokens the training split uses; set it to at "
        f"least {base}, or to null to keep them alone")


def test_pipeline_recipe_mr_augment_n20_as_the_readme_runs_it(tmp_path):
    """`distill pipeline recipe=mr_augment_n20` (the README's 99% command, tiny models): 20 variants per sentence,
    span deletion on, and a no-KD twin for the KD stage's steps."""
    from omegaconf import OmegaConf

    run = _cli("pipeline", "recipe=mr_augment_n20", "teacher=tiny", "student=tiny", "data.limit=24",
               "finetune.max_steps=2", "trainer.max_steps=3", *TINY_MLM_RECIPE_N, f"stage_root={tmp_path / 'stages'}",
               "export.formats=[hf]", f"hydra.run.dir={tmp_path / 'run'}",
               env={"DISTILL_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr[-3000:]
    dirs = {k: Path(v) for k, v in json.loads((tmp_path / "run" / "pipeline.json").read_text()).items()}
    kd = OmegaConf.load(dirs["distill"] / "stage.yaml")
    assert (kd.data.augment.n, kd.data.augment.delete_span, kd.trainer.epochs) == (20, 0.5, 4)
    assert json.loads((dirs["baseline"] / "metrics.json").read_text())["steps"] == 3
    (log,) = (tmp_path / "run").glob("*.log")  # hydra's job log
    assert re.search(r"augment: \d+ train rows -> \d+ \(20 variants asked per row", log.read_text())
