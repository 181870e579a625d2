"""Train the course's bundled GPT-2 ("course-gpt2") from scratch, on 2 CPU cores.

Reproduce it on a fresh Debian machine that reaches only the package registries:

    apt-get install dict-foldoc dict-jargon dict-devil
    make setup                                   # the course's pinned .venv
    .venv/bin/python scripts/train_course_model.py

It writes into course_lib/assets/ (the files the course ships):

- course-gpt2/        weights (safetensors), config, tokenizer, metrics.json and the model card README.md
- text/heldout.jsonl  the held-out passages (never trained on): the course's evaluation text
- text/calibration.jsonl  a few training passages used to calibrate quantizers

While it trains it prints the loss and, every ``--show-every`` steps, the greedy completion of
"Cryptography is a": watch the model learn English before it learns what the words mean.

Everything is seeded; run on the same kind of machine, it gives the same files.

Measured alternatives (2 cores, seed 0; top-1 agreement of head 0 of layer 0 on the 571 held-out passages,
as in ``benchmarks/single_head_topk.py``), with ``--steps`` and ``--cryptography-weight``:

========================  ==========  =========  =====================  ==============  ======================
run                       train time  held-out   "Cryptography is a"    head removed    course's 4-bit circuit
                                      perplexity                                        (fast, 6 lookup bits)
========================  ==========  =========  =====================  ==============  ======================
2,400 steps, weight 1     33 min      66.4       "set of a set of ..."  93.3%           95.0%
4,000 steps, weight 1     27 min      54.8       "set of objects ..."   not measured    not measured
4,000 steps, weight 8     27 min      60.4       "public-key ..."       90.3%           91.0%
2,400 steps, weight 8     16 min      70.1       "public-key ..."       88.9%           93.2%
========================  ==========  =========  =====================  ==============  ======================

The bundled model is the last row (the defaults). Without the weight, no run (up to 8,000 steps) completed
"Cryptography is a" about cryptography; with it, both runs do. Trained longer, the weighted model's first head
does more and quantizes worse: the course's default circuit then keeps little of it. Train times vary up to 2x
with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from course_lib import corpus
from course_lib.data import CALIBRATION_FILE, HELDOUT_FILE, save_passages
from course_lib.evaluation import perplexity
from course_lib.models import BUNDLED_MODEL_DIR, EOS_TOKEN

SEED = 0
CARD_PROMPTS = (
    "Cryptography is a",
    "A compiler is a program that",
    "The Unix operating system",
    "A hacker is",
    "Encryption",
)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``minimum``, or an error that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=at_least(1), default=2400, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="sequences per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary (default: %(default)s)")
    parser.add_argument(
        "--cryptography-weight",
        type=at_least(1),
        default=8,
        help="a training window starts this many times as often in a passage about cryptography; 1: as often as "
        "anywhere else (default: %(default)s)",
    )
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument(
        "--show-every",
        type=at_least(0),
        default=400,
        help="print the greedy completion of the card's first prompt every this many steps; 0: never "
        "(default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=BUNDLED_MODEL_DIR, help="model folder (default: the bundled one)")
    parser.add_argument(
        "--card-only", action="store_true", help="only rewrite README.md from the folder's metrics.json"
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: re-evaluate the saved model and rewrite metrics, card and shipped texts "
        "(the training settings and time are kept from metrics.json)",
    )
    return parser.parse_args()


def train_tokenizer(texts: list[str], vocab_size: int) -> GPT2TokenizerFast:
    """A byte-level BPE like GPT-2's, trained on the training split only."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN], show_progress=False
    )
    return GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN
    )


def token_stream(tokenizer: GPT2TokenizerFast, texts: list[str]) -> np.ndarray:
    """All training passages as one stream of ids, each passage preceded by <|endoftext|>."""
    ids: list[int] = []
    for encoded in tokenizer(texts)["input_ids"]:
        ids.append(tokenizer.eos_token_id)
        ids.extend(encoded)
    return np.asarray(ids, dtype=np.int64)


def cryptography_positions(tokenizer: GPT2TokenizerFast, passages: list[corpus.Passage]) -> np.ndarray:
    """For each position of `token_stream`: True inside a passage about cryptography (its <|endoftext|> included)."""
    lengths = [len(ids) + 1 for ids in tokenizer([p.text for p in passages])["input_ids"]]
    return np.repeat([p.about_cryptography for p in passages], lengths)


def window_start_weights(in_cryptography: np.ndarray, cryptography_weight: int, block: int) -> np.ndarray:
    """Probability that a training window starts at each position of `token_stream`.

    Every position weighs 1, except those of a passage about cryptography (`in_cryptography`),
    which weigh `cryptography_weight`: the course is about encryption, so its model reads that
    part of the corpus more often, as large models' training mixtures weight their sources.
    """
    starts = np.where(in_cryptography, float(cryptography_weight), 1.0)[:-block]  # a window needs `block` tokens
    return starts / starts.sum()


def unigram_perplexity(
    train_ids: np.ndarray, tokenizer: GPT2TokenizerFast, texts: list[str], n_positions: int
) -> float:
    """Perplexity of the add-one-smoothed unigram model on the same tokens `perplexity` scores."""
    counts = Counter(train_ids.tolist())
    total = len(train_ids) + len(tokenizer)
    nll, n = 0.0, 0
    for encoded in tokenizer(texts)["input_ids"]:
        for token in encoded[: n_positions - 1]:
            nll -= math.log((counts[token] + 1) / total)
            n += 1
    return math.exp(nll / n)


def greedy(model: GPT2LMHeadModel, tokenizer: GPT2TokenizerFast, prompt: str, new_tokens: int = 20) -> str:
    encoded = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**encoded, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0])


def write_model_card(out: Path, metrics: dict) -> None:
    """Write the model card README.md from the metrics of a training run."""
    completions = "\n".join(f"| `{c['prompt']}` | {c['completion']!r} |" for c in metrics["greedy_completions"])
    c, m = metrics["config"], metrics
    ppl_train, ppl_heldout, ppl_unigram = (
        m["train_perplexity"],
        m["heldout_perplexity"],
        m["unigram_heldout_perplexity"],
    )
    weighting = ""
    if m.get("cryptography_weight", 1) > 1:
        weighting = (
            f" A training window starts {m['cryptography_weight']} times as often in one of the"
            f" {m['cryptography_passages']} passages about cryptography (a word in *crypt* or *cipher*): they hold"
            f" {m['cryptography_token_share']:.1%} of the training tokens and start"
            f" {m['cryptography_window_share']:.1%} of the windows. The course is about encryption, so its model"
            " reads more about it, as large models' training mixtures weight their sources."
        )
    card = f"""# course-gpt2: the FHE course's bundled GPT-2

A small language model with **exactly GPT-2's architecture** (`transformers.GPT2LMHeadModel`, `GPT2Config`),
trained from scratch by this project so that every notebook, test and offline workshop has a GPT-2 to run without
downloading anything. Swap in OpenAI's `gpt2` with `COURSE_MODEL=gpt2` when you are online.

| | course-gpt2 | OpenAI gpt2 (for scale) |
|---|---|---|
| layers x heads | {c["n_layer"]} x {c["n_head"]} | 12 x 12 |
| model width (head dim) | {c["n_embd"]} ({c["n_embd"] // c["n_head"]}) | 768 (64) |
| context (positions) | {c["n_positions"]} | 1024 |
| vocabulary | {c["vocab_size"]} byte-level BPE | 50257 byte-level BPE |
| parameters | {metrics["parameters"]:,} | 124M |

Why this size: one attention head of it (head dim 32, width 128) compiles in seconds and runs on ciphertexts in about
half a minute on a laptop, while keeping GPT-2's exact module names (`transformer.h[i].attn.c_attn`, `c_proj`), so the
same course code runs on OpenAI's `gpt2`.

## Training data
Entries of three dictionaries about computing, read from Debian's dictd packages and cleaned of their markup
(`course_lib/corpus.py`):

- *The Free On-line Dictionary of Computing* (FOLDOC), 19 January 2023, Debian package `dict-foldoc`. Copyright
  1985 by Denis Howe; "Permission is granted to copy, distribute and/or modify this document under the terms of the
  GNU Free Documentation License, Version 1.1 or any later version published by the Free Software Foundation; with no
  Invariant Sections, Front- or Back-Cover Texts." The held-out passages shipped in `course_lib/assets/text/` are
  modified excerpts of FOLDOC (markup removed) and are distributed under the same license; see https://foldoc.org/.
- *The Jargon File* 4.4.7 (29 Dec 2003), Debian package `dict-jargon`: public domain.
- *The Devil's Dictionary* by Ambrose Bierce (1911), Debian package `dict-devil`: public domain.

{metrics["passages"]["train"]:,} training passages ({metrics["train_tokens"]:,} tokens) and
{metrics["passages"]["heldout"]:,} held-out passages, split by a hash of source and headword; definitions that occur
twice are kept once, so the splits share no text. The held-out passages are the course's evaluation text and were
never trained on.

## Training
```
apt-get install dict-foldoc dict-jargon dict-devil
.venv/bin/python scripts/train_course_model.py {metrics["command_args"]}
```
Seed {SEED}; {m["steps"]:,} AdamW steps of {m["batch_size"]} x {c["n_positions"]} tokens,
peak learning rate {m["lr"]}, cosine decay to a tenth; no dropout.{weighting}
Wall time **{m["train_seconds"] / 60:.1f} min on
{m["threads"]} CPU cores** (torch {m["torch_version"]}).

## Results
Perplexity per token; each passage is scored from `<|endoftext|>` over its first {c["n_positions"]}
tokens (`course_lib.evaluation.perplexity`).

| split | loss (nats/token) | perplexity |
|---|---|---|
| training passages (sample of {metrics["passages"]["train_sample"]}) | {math.log(ppl_train):.3f} | {ppl_train:.2f} |
| held-out passages | {math.log(ppl_heldout):.3f} | **{ppl_heldout:.2f}** |
| unigram baseline on held-out (add-one smoothing, training counts) | {math.log(ppl_unigram):.3f} | {ppl_unigram:.2f} |

The held-out perplexity is {ppl_unigram / ppl_heldout:.1f} times lower than
the unigram baseline's.

## Greedy completions (20 new tokens)
| prompt | completion |
|---|---|
{completions}

## Limits
A 1-million-parameter model trained for minutes on 6 MB of dictionary text: it writes dictionary-style English about
computing, often confidently wrong. It is a teaching model for encrypted inference, not a source of facts.
"""
    (out / "README.md").write_text(card, encoding="utf-8")


def main() -> None:
    args = parse_args()
    if args.card_only:
        write_model_card(args.out, json.loads((args.out / "metrics.json").read_text(encoding="utf-8")))
        return
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    print("reading the corpus ...", flush=True)
    train_passages, heldout_passages = corpus.split_passages(corpus.read_passages())
    train_texts = [p.text for p in train_passages]
    heldout_texts = [p.text for p in heldout_passages]
    print(f"  {len(train_texts)} training passages, {len(heldout_texts)} held-out passages", flush=True)

    if args.evaluate_only:
        previous = json.loads((args.out / "metrics.json").read_text(encoding="utf-8"))
        tokenizer = GPT2TokenizerFast.from_pretrained(args.out)
    else:
        print("training the tokenizer ...", flush=True)
        tokenizer = train_tokenizer(train_texts, args.vocab_size)
    ids = token_stream(tokenizer, train_texts)
    in_cryptography = cryptography_positions(tokenizer, train_passages)  # one flag per position of `ids`
    print(f"  vocabulary {len(tokenizer)}, {len(ids):,} training tokens", flush=True)

    if args.evaluate_only:
        model = GPT2LMHeadModel.from_pretrained(args.out).eval()
        previous.setdefault("cryptography_weight", 1)  # a model trained before the option existed
        for name in ("steps", "batch_size", "lr", "threads", "cryptography_weight"):
            setattr(args, name, previous[name])
        evaluate_and_save(
            args, model, tokenizer, ids, in_cryptography, train_passages, heldout_passages, previous["train_seconds"]
        )
        return
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=128,
        n_layer=4,
        n_head=4,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # No dropout: a model this small, trained for a few epochs, underfits rather than overfits.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"  model: {n_params:,} parameters", flush=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, args.steps // 30)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    generator = np.random.default_rng(SEED)
    block = config.n_positions
    data = torch.from_numpy(ids)
    start_weights = (
        window_start_weights(in_cryptography, args.cryptography_weight, block)
        if args.cryptography_weight > 1
        else None  # uniform: drawn as before this option existed, so the shipped model is reproduced
    )
    model.train()
    start = time.perf_counter()
    running = None
    for step in range(args.steps):
        if start_weights is None:
            starts = generator.integers(0, len(ids) - block, size=args.batch_size)
        else:
            starts = generator.choice(len(start_weights), size=args.batch_size, p=start_weights)
        batch = torch.stack([data[s : s + block] for s in starts])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 200 == 0 or step == args.steps - 1:
            elapsed = time.perf_counter() - start
            print(
                f"  step {step:5d}/{args.steps}  loss {running:.3f}  lr {lr_at(step):.2e}  {elapsed / 60:5.1f} min",
                flush=True,
            )
        if args.show_every and (step + 1) % args.show_every == 0 and step + 1 < args.steps:
            # Greedy decoding draws no random numbers and the model has no dropout, so watching the
            # model learn leaves the trained weights exactly as they would be without it.
            model.eval()
            with torch.no_grad():
                print(f"    after {step + 1} steps: {greedy(model, tokenizer, CARD_PROMPTS[0])!r}", flush=True)
            model.train()
    train_seconds = time.perf_counter() - start
    model.eval()
    evaluate_and_save(args, model, tokenizer, ids, in_cryptography, train_passages, heldout_passages, train_seconds)


def evaluate_and_save(
    args, model, tokenizer, ids, in_cryptography, train_passages, heldout_passages, train_seconds: float
) -> None:
    """Measure the model (perplexities, greedy completions), then save it with its card and the shipped texts.

    `ids` is the training token stream and `in_cryptography` its per-position flags (`cryptography_positions`).
    """
    config = model.config
    block = config.n_positions
    n_params = sum(p.numel() for p in model.parameters())
    train_texts = [p.text for p in train_passages]
    heldout_texts = [p.text for p in heldout_passages]
    print("evaluating ...", flush=True)
    start_weights = window_start_weights(in_cryptography, args.cryptography_weight, block)
    sample_rng = np.random.default_rng(SEED + 1)
    train_sample = [
        train_texts[i] for i in sorted(sample_rng.choice(len(train_texts), len(heldout_texts), replace=False))
    ]
    metrics = {
        "config": {k: getattr(config, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")},
        "parameters": n_params,
        "passages": {"train": len(train_texts), "heldout": len(heldout_texts), "train_sample": len(train_sample)},
        "train_tokens": int(len(ids)),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "threads": args.threads,
        "seed": SEED,
        "cryptography_weight": args.cryptography_weight,
        "cryptography_passages": sum(p.about_cryptography for p in train_passages),
        "cryptography_window_share": float(start_weights[in_cryptography[:-block]].sum()),
        "cryptography_token_share": float(in_cryptography.mean()),
        "command_args": f"--steps {args.steps} --batch-size {args.batch_size} --lr {args.lr}"
        f" --cryptography-weight {args.cryptography_weight}",
        "torch_version": torch.__version__,
        "train_seconds": round(train_seconds, 1),
        "train_perplexity": perplexity(model, tokenizer, train_sample),
        "heldout_perplexity": perplexity(model, tokenizer, heldout_texts),
        "unigram_heldout_perplexity": unigram_perplexity(ids, tokenizer, heldout_texts, block),
        "greedy_completions": [{"prompt": p, "completion": greedy(model, tokenizer, p)} for p in CARD_PROMPTS],
    }
    print(json.dumps({k: metrics[k] for k in ("train_perplexity", "heldout_perplexity", "unigram_heldout_perplexity")}))
    for item in metrics["greedy_completions"]:
        print(f"  {item['completion']!r}")

    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    write_model_card(args.out, metrics)
    if args.out == BUNDLED_MODEL_DIR:
        save_passages(HELDOUT_FILE, heldout_passages)
        calibration_rng = np.random.default_rng(SEED + 2)
        picked = sorted(calibration_rng.choice(len(train_passages), 64, replace=False))
        save_passages(CALIBRATION_FILE, [train_passages[i] for i in picked])
    print(f"saved to {args.out} ({train_seconds / 60:.1f} min of training)")


if __name__ == "__main__":
    main()
