"""A seeded grammar that writes a short English sentence about a digit; its wording is the text's private style.

Every sentence is  [prefix filler] template(number) [suffix filler]  where
  * the template is one of TEMPLATES (where the number goes: "{n}"),
  * the number is written as a word ("seven"), a numeral ("7") or a phrase ("three plus four", "nine minus two"),
  * the fillers say nothing about the digit.
Every choice is drawn independently of the digit (each form exists for every digit 0–9), so the style carries no
information about the label. The same (seed, stream, labels) give the same sentences.

Tokens are whitespace-separated words from VOCAB, every one a single word piece of the MiniLM tokenizer (the
text modality checks that); a token array holds the sentence's word ids, then <eos>, then <pad>.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from data_prep.errors import DataError

GRAMMAR_VERSION = "digits4-grammar/1"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NUMERALS = [str(d) for d in range(10)]
TEMPLATES = [
    "this is the digit {n}",
    "{n} is the number here",
    "i see a {n}",
    "the picture shows {n}",
    "you can read {n} on it",
    "it says {n}",
    "look , a {n}",
    "the answer is {n}",
    "we count {n}",
    "someone wrote {n}",
    "here we have {n}",
    "the label reads {n}",
    "my favourite number is {n}",
    "they said {n} out loud",
]
PREFIXES = ["", "", "well ,", "okay ,", "so", "honestly ,", "i think", "look"]
SUFFIXES = ["", "", "today", "again", "for sure", "i guess", "right now", "please"]
FORMS = ("word", "numeral", "phrase")
FORM_PROBS = (0.4, 0.3, 0.3)
SPECIALS = ["<pad>", "<eos>"]
PAD, EOS = 0, 1


def _vocabulary() -> list[str]:
    words: list[str] = []
    for text in [*TEMPLATES, *PREFIXES, *SUFFIXES, "plus minus", *WORDS, *NUMERALS]:
        for w in text.replace("{n}", " ").split():
            if w not in words:
                words.append(w)
    return SPECIALS + words


VOCAB: list[str] = _vocabulary()
WORD_ID = {w: i for i, w in enumerate(VOCAB)}


def grammar_record(seed: int) -> dict:
    """What the manifest records: the grammar itself, its seed, its vocabulary and their checksum."""
    body = {"version": GRAMMAR_VERSION, "templates": TEMPLATES, "prefixes": PREFIXES, "suffixes": SUFFIXES,
            "forms": list(FORMS), "form_probs": list(FORM_PROBS), "words": WORDS, "numerals": NUMERALS,
            "vocab": VOCAB}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {**body, "seed": seed, "sha256": digest}


def number_text(digit: int, form: int, rng: np.random.Generator) -> str:
    """The digit as a word, a numeral or an arithmetic phrase (a sum or a difference of two digits)."""
    if FORMS[form] == "word":
        return WORDS[digit]
    if FORMS[form] == "numeral":
        return NUMERALS[digit]
    if rng.random() < 0.5:  # a + b = digit
        a = int(rng.integers(0, digit + 1))
        return f"{WORDS[a]} plus {WORDS[digit - a]}"
    a = int(rng.integers(digit, 10))  # a - b = digit
    return f"{WORDS[a]} minus {WORDS[a - digit]}"


def write_sentences(labels: np.ndarray, seed: int, stream: int = 0) -> tuple[list[str], np.ndarray]:
    """One sentence per label, and its style (template, form, prefix, suffix) as (N, 4) int64."""
    rng = np.random.default_rng([seed, stream, 7])
    sentences, styles = [], []
    for d in np.asarray(labels).tolist():
        t = int(rng.integers(len(TEMPLATES)))
        f = int(rng.choice(len(FORMS), p=FORM_PROBS))
        p, s = int(rng.integers(len(PREFIXES))), int(rng.integers(len(SUFFIXES)))
        core = TEMPLATES[t].replace("{n}", number_text(int(d), f, rng))
        sentences.append(" ".join(w for w in (PREFIXES[p], core, SUFFIXES[s]) if w))
        styles.append((t, f, p, s))
    return sentences, np.asarray(styles, dtype=np.int64).reshape(-1, 4)


def encode_sentences(sentences: list[str], max_tokens: int, where: str = "sentences") -> np.ndarray:
    """(N, max_tokens) int64 word ids + <eos> + <pad>; a sentence (with its <eos>) longer than max_tokens is a
    DataError naming it, an unknown word too."""
    out = np.full((len(sentences), max_tokens), PAD, dtype=np.int64)
    for i, text in enumerate(sentences):
        words = text.split()
        if len(words) + 1 > max_tokens:
            raise DataError(where, f"sentence {i} has {len(words)} words + <eos>, more than the maximum of "
                                   f"{max_tokens} tokens: {text!r}")
        unknown = [w for w in words if w not in WORD_ID]
        if unknown:
            raise DataError(where, f"sentence {i} uses words outside the vocabulary {unknown}: {text!r}")
        out[i, : len(words)] = [WORD_ID[w] for w in words]
        out[i, len(words)] = EOS
    return out


def decode_tokens(ids, vocab: list[str] = VOCAB) -> str:
    """Word ids -> text, stopping at <eos>; <pad> is skipped."""
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
        if i == EOS:
            break
        if i != PAD:
            words.append(vocab[i] if 0 <= i < len(vocab) else "<unk>")
    return " ".join(words)


def max_sentence_tokens() -> int:
    """The longest sentence the grammar can write, in tokens with <eos>."""
    core = max(len(t.replace("{n}", "x x x").split()) for t in TEMPLATES)
    return max(len(p.split()) for p in PREFIXES) + core + max(len(s.split()) for s in SUFFIXES) + 1
