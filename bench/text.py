"""Text classification on a frozen sentence encoder, against the classic baseline.

On one stratified split of each dataset (train 60%, validation 20%, test 20%; seed 0; the test
split chooses nothing), in the same run:

- TF-IDF (words and word pairs, sublinear counts) + logistic regression, C by 5-fold CV on
  train + validation: the baseline every text classifier has to beat;
- a logistic probe on all-MiniLM-L6-v2's sentence vectors (the packaged encoder tlpipe's text
  path uses, ``tlpipe/vectors/text_encoder.py``), C as above;
- tlpipe's default: what the pipeline's head stage does with its default settings (the
  ladder of heads on plain and augmented views, ``params.yaml``'s ``head`` and
  ``features.views``; chosen on validation, or by CV on train + validation when that is too
  small, then refitted on both where nothing after it needs validation), the ``finetune``
  stage's fine-tuning of the encoder's top layers (kept only if it beats the head on
  validation) and per-class thresholds, here on the same split;
- all again with 8 and 16 training texts per class (few-shot), scored on the same test split,
  and there also the encoder fine-tuned: its top 2 layers and a head started from the probe,
  layer-wise learning-rate decay 0.8, 15 epochs (no validation to stop on), as tlpipe's text
  fine-tuning would, and SetFit's recipe (contrastive pairs, the whole encoder trained with
  CosineSimilarityLoss, then logistic regression), reimplemented here with its defaults since
  the ``setfit`` package is not installed.

Datasets: quotes-topics (../shared/datasets/quotes-topics: six topic folders of short
texts, whose topics are often only implied); and a set made here, "reviews": product
reviews written from templates, each class (praise, complaint, question) with phrases of its
own, so the words alone decide: TF-IDF's home ground.

    .venv/bin/python bench/text.py [--datasets quotes,reviews] [--no-fine-tuning]
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from tlpipe.vectors.text_encoder import load_text_encoder

QUOTES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "quotes-topics"
SEED = 0


def quotes() -> tuple[list[str], list[str]]:
    files = sorted(QUOTES.glob("*/*.txt"))
    return [f.read_text(encoding="utf-8") for f in files], [f.parent.name for f in files]


def reviews(per_class: int = 120) -> tuple[list[str], list[str]]:
    """Three classes of review (praise, complaint, question) about the same products, each
    class with phrases of its own."""
    generator = random.Random(SEED)
    products = ["kettle", "phone case", "backpack", "desk lamp", "blender", "headphones",
                "running shoes", "coffee grinder", "office chair", "rain jacket"]
    praise = ["works like a charm", "exceeded what I hoped", "I would buy it again",
              "solid and well made", "my family loves it", "does exactly what it says"]
    complaint = ["stopped working after a week", "not worth the money", "feels flimsy",
                 "arrived scratched", "I am sending it back", "the seams came apart"]
    question = ["does it come in other colours", "is it safe for the dishwasher",
                "how long is the warranty", "will it fit a 15 inch laptop",
                "can the battery be replaced", "is there a bigger size"]
    fillers = ["Honestly,", "Well,", "So", "After a month,", "To be fair,", ""]
    texts, labels = [], []
    for label, pool in (("praise", praise), ("complaint", complaint), ("question", question)):
        for _ in range(per_class):
            product, phrase = generator.choice(products), generator.choice(pool)
            ending = "?" if label == "question" and generator.random() < 0.5 else "."
            texts.append(f"{generator.choice(fillers)} the {product}: {phrase}{ending}".strip())
            labels.append(label)
    return texts, labels


def split(labels: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indices = np.arange(len(labels))
    train_val, test = train_test_split(indices, test_size=0.2, stratify=labels,
                                       random_state=SEED)
    train, val = train_test_split(train_val, test_size=0.25,
                                  stratify=[labels[i] for i in train_val], random_state=SEED)
    return train, val, test


def few(train: np.ndarray, labels: list[str], per_class: int) -> np.ndarray:
    generator = np.random.default_rng(SEED)
    return np.concatenate([generator.permutation([i for i in train if labels[i] == name])
                           [:per_class] for name in sorted(set(labels))])


def probe() -> LogisticRegressionCV:
    return LogisticRegressionCV(Cs=np.logspace(-2, 3, 11).tolist(), cv=5, max_iter=3000)


def score(name: str, predicted: list[str], truth: list[str], seconds: float) -> dict:
    return {"model": name, "accuracy": accuracy_score(truth, predicted),
            "macro_f1": f1_score(truth, predicted, average="macro"), "seconds": seconds}


def run(texts: list[str], labels: list[str], encoder, fine_tune: bool = True
        ) -> Iterator[dict]:
    """The rows of one dataset, each as soon as it is measured."""
    train, val, test = split(labels)
    truth = [labels[i] for i in test]
    started = time.perf_counter()
    vectors = encoder.encode(texts)
    encode_s = time.perf_counter() - started
    for shots in (None, 16, 8):
        fit = np.concatenate([train, val]) if shots is None else few(train, labels, shots)
        if shots is not None and min(sum(labels[i] == c for i in fit)
                                     for c in set(labels)) < shots:
            continue
        suffix = "" if shots is None else f", {shots}/class"
        measured = []
        started = time.perf_counter()
        tfidf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                              probe() if shots is None else
                              LogisticRegressionCV(Cs=10, cv=min(5, shots), max_iter=3000))
        tfidf.fit([texts[i] for i in fit], [labels[i] for i in fit])
        measured.append(score(f"TF-IDF + LR{suffix}", tfidf.predict([texts[i] for i in test]),
                              truth, time.perf_counter() - started))
        started = time.perf_counter()
        head = probe() if shots is None else LogisticRegressionCV(Cs=10, cv=min(5, shots),
                                                                  max_iter=3000)
        head.fit(vectors[fit], [labels[i] for i in fit])
        measured.append(score(f"MiniLM probe{suffix}", head.predict(vectors[test]), truth,
                              time.perf_counter() - started + encode_s))
        yield from measured
        started = time.perf_counter()
        # Few-shot, tlpipe holds back a quarter of the texts for validation, as its own split
        # of such a folder would (early stopping and fine-tuning are judged there).
        own_train, own_val = (train, val) if shots is None else train_test_split(
            fit, test_size=0.25, stratify=[labels[i] for i in fit], random_state=SEED)
        yield score(f"tlpipe default{suffix}",
                    tlpipe_default(encoder, texts, labels, own_train, own_val, test, fine_tune),
                    truth, time.perf_counter() - started)
        if shots is not None and fine_tune:  # where the frozen probe has the least to go on
            started = time.perf_counter()
            yield score(f"MiniLM fine-tuned (top 2 layers){suffix}",
                        fine_tuned(encoder, texts, labels, fit, test), truth,
                        time.perf_counter() - started)
            started = time.perf_counter()
            yield score(f"SetFit recipe (reimplemented){suffix}",
                        setfit_recipe(encoder, texts, labels, fit, test), truth,
                        time.perf_counter() - started)


def tlpipe_default(encoder, texts: list[str], labels: list[str], train: np.ndarray,
                   val: np.ndarray, test: np.ndarray, fine_tune: bool = True) -> list[str]:
    """What ``tlpipe run`` makes with its default settings: the head stage's choice (training
    texts with ``features.views`` augmented views each, the ladder scored on validation or by
    CV, refitted on train + validation as ``stages/head.py`` decides), the finetune stage's
    fine-tuned top layers where they beat it on validation, and per-class thresholds chosen on
    validation (``fine_tune`` False: the finetune stage skipped, as with finetune.epochs 0)."""
    import hashlib

    import torch

    from tlpipe.config import Params
    from tlpipe.metrics import decide
    from tlpipe.serving.inference import TextScorer
    from tlpipe.stages.head import refits_on_validation
    from tlpipe.training.cached import Features
    from tlpipe.training.decisions import choose_thresholds
    from tlpipe.training.ladder import fit, select
    from tlpipe.training.model import Classifier
    from tlpipe.training.text_finetune import finetune_text
    from tlpipe.vectors.text_augment import augmented_text

    params = Params.model_validate({"registry": {"model_name": "bench"}})
    classes = sorted(set(labels))

    def features(rows: np.ndarray, views: int) -> Features:
        items = []
        for i in rows:
            digest = hashlib.sha256(texts[i].encode()).hexdigest()
            items += [(i, view, texts[i] if view == 0 else augmented_text(
                texts[i], digest, view, params.seed, params.text.token_dropout))
                for view in range(views + 1)]
        vectors = encoder.encode([text for _, _, text in items], params.text.batch_size)
        return Features(torch.from_numpy(vectors),
                        torch.tensor([classes.index(labels[i]) for i, _, _ in items]),
                        np.array([i for i, _, _ in items]), np.array([v for _, v, _ in items]))

    train_x = features(train, params.features.views)
    val_x = features(val, 0)
    chosen, leaderboard = select(train_x, val_x, len(classes), params.head, params.seed)
    head, spec, _ = fit(chosen, train_x, val_x, len(classes), params.head, params.seed)
    protocol = next(row for row in leaderboard if row.chosen).protocol
    fine_tunes = fine_tune and params.finetune.epochs > 0 and spec.fine_tunable
    refit = refits_on_validation(protocol, chosen.kind, lambda: fine_tunes)
    if refit:
        head, _, _ = fit(chosen, Features.join(train_x, val_x), None, len(classes),
                         params.head, params.seed)
    model = Classifier(encoder, head)
    if fine_tunes:  # the finetune stage: kept only if it beats the head on validation
        result = finetune_text(encoder, head, *(
            ([texts[i] for i in rows], [classes.index(labels[i]) for i in rows])
            for rows in (train, val)), len(classes), params.finetune, params.seed,
            torch.device("cpu"), params.head.selection_metric)
        model = Classifier(result.encoder, result.head)
    scorer = TextScorer(model, torch.device("cpu"), params.text.batch_size)
    thresholds = None
    if not refit:  # validation the head was not fitted on
        thresholds = choose_thresholds(
            params.evaluation.thresholds, scorer([texts[i] for i in val]),
            np.array([classes.index(labels[i]) for i in val]), params.head.selection_metric,
            params.seed).thresholds
    answers = decide(scorer([texts[i] for i in test]), thresholds)
    return [classes[i] for i in answers]


def fine_tuned(encoder, texts: list[str], labels: list[str], fit: np.ndarray,
               test: np.ndarray, layers: int = 2, epochs: int = 15, lr: float = 1e-4,
               decay: float = 0.8) -> list[str]:
    """The top ``layers`` transformer layers and a new linear head trained together (the head
    started from the logistic probe's weights, fastai style), each layer below the top at
    ``lr * decay ** depth``; a fixed number of epochs (a few-shot split has no validation).
    The encoder is restored afterwards."""
    import copy

    import torch

    classes = sorted(set(labels))
    model = copy.deepcopy(encoder).train()
    for parameter in model.parameters():
        parameter.requires_grad = False
    groups = []
    for depth, block in enumerate(reversed(model.blocks[-layers:])):
        for parameter in block.parameters():
            parameter.requires_grad = True
        groups.append({"params": list(block.parameters()), "lr": lr * decay ** depth})
    start = probe().fit(encoder.encode([texts[i] for i in fit]), [labels[i] for i in fit])
    head = torch.nn.Linear(encoder.dimension, len(classes))
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(start.coef_).float())
        head.bias.copy_(torch.from_numpy(start.intercept_).float())
    optimizer = torch.optim.AdamW([*groups, {"params": head.parameters(), "lr": lr * 10}])
    target = torch.tensor([classes.index(labels[i]) for i in fit])
    tokens = model.tokenize([texts[i] for i in fit])
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        for rows in torch.randperm(len(fit), generator=generator).split(16):
            loss = torch.nn.functional.cross_entropy(
                head(model(tokens.ids[rows], tokens.attention_mask[rows])), target[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        vectors = torch.from_numpy(model.encode([texts[i] for i in test]))
        return [classes[i] for i in head(vectors).argmax(dim=1).tolist()]


def setfit_recipe(encoder, texts: list[str], labels: list[str], fit: np.ndarray,
                  test: np.ndarray, iterations: int = 20, lr: float = 2e-5,
                  batch: int = 16) -> list[str]:
    """SetFit's recipe with its defaults (Tunstall et al. 2022; the ``setfit`` package is not
    installed here): for each of ``iterations`` rounds, every training text is paired with a
    random text of its class (target cosine 1) and one of another class (target 0); the whole
    encoder trains one epoch on the pairs with CosineSimilarityLoss (AdamW, ``lr``, 10%
    warm-up), then a logistic regression is fitted on its vectors."""
    import copy
    import random

    import torch
    from sklearn.linear_model import LogisticRegression

    chooser = random.Random(SEED)
    by_class: dict[str, list[int]] = {}
    for i in fit:
        by_class.setdefault(labels[i], []).append(int(i))
    pairs = []
    for _ in range(iterations):
        for i in fit:
            other = chooser.choice([c for c in by_class if c != labels[i]])
            pairs += [(int(i), chooser.choice(by_class[labels[i]]), 1.0),
                      (int(i), chooser.choice(by_class[other]), 0.0)]
    chooser.shuffle(pairs)
    model = copy.deepcopy(encoder).train()
    model.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = -(-len(pairs) // batch)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup))))
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        left = model.tokenize([texts[a] for a, _, _ in chunk])
        right = model.tokenize([texts[b] for _, b, _ in chunk])
        cosine = torch.nn.functional.cosine_similarity(
            model(left.ids, left.attention_mask), model(right.ids, right.attention_mask))
        loss = torch.nn.functional.mse_loss(cosine, torch.tensor([t for _, _, t in chunk]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    head = LogisticRegression(max_iter=3000).fit(model.encode([texts[i] for i in fit]),
                                                 [labels[i] for i in fit])
    return head.predict(model.encode([texts[i] for i in test])).tolist()


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="quotes,reviews")
    parser.add_argument("--no-fine-tuning", action="store_true",
                        help="skip the fine-tuned rows (minutes on a CPU)")
    args = parser.parse_args()
    makers = {"quotes": quotes, "reviews": reviews}
    encoder = load_text_encoder()
    print("| dataset | texts | test | model | accuracy | macro-F1 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for dataset in args.datasets.split(","):
        texts, labels = makers[dataset]()
        tested = len(split(labels)[2])
        for row in run(texts, labels, encoder, not args.no_fine_tuning):
            print(f"| {dataset} | {len(texts)} | {tested} | {row['model']} | "
                  f"{row['accuracy']:.4f} | {row['macro_f1']:.4f} | {row['seconds']:.1f} |",
                  flush=True)
    print("The MiniLM rows' seconds include encoding every text once (CPU, 2 cores).")


if __name__ == "__main__":
    main()
