"""Byte-level BPE tokenizers trained on a fixed corpus, with each model's special tokens first.

A few hundred tokens keep the embedding tiny while every byte still encodes (byte-level alphabet),
so any prompt or generated id decodes. The pre-tokenizer is Qwen2's (NFC + split regex + byte
level), so transformers' `Qwen2Tokenizer`, which rebuilds that pipeline from vocab and merges,
encodes exactly like the raw tokenizer.json.
"""

from __future__ import annotations

from typing import Any

TARGET_VOCAB = 420  # trained size before rounding; the model's vocab_size rounds up (see vocab_size)

# Qwen2's split pattern (contractions, letters, single digits, punctuation runs, newlines, spaces).
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = (
    "Read all the text in the image.",
    "Extract the text content from this image.",
    "OCR:",
    "Table Recognition:",
    "Formula Recognition:",
    "Chart Recognition:",
    "qwenvl markdown",
    "You are a helpful assistant.",
    "system user assistant",
    "The quick brown fox jumps over the lazy dog.",
    "Invoice number 2024-0815, total 1,299.50 EUR, due on 30 June.",
    "Name | Quantity | Price\nPaper | 12 | 3.40\nInk | 2 | 19.99",
    "<table><tr><td>cell</td><td>value</td></tr></table>",
    "# Title\n\n## Section 1\n\nA paragraph of text with **bold** and *italic* words.",
    '[{"bbox": [10, 20, 300, 60], "category": "Title", "text": "Annual Report"}]',
    "Caption Footnote Formula List-item Page-footer Page-header Picture Section-header Table Text Title",
    "E = mc^2, \\frac{a}{b} + \\sqrt{x} = y",
    "Dear customer, thank you for your order. Please find the receipt attached.",
    "Page 3 of 12 - Confidential",
    "Temperature: 21.5 C, Humidity: 40 %, Pressure: 1013 hPa",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le rapide renard brun saute par-dessus le chien paresseux.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "快速的棕色狐狸跳过了懒狗。文字识别。",
    "https://example.org/docs/index.html?page=2#section",
    "def main() -> None:\n    print('hello world')\n",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "Signed: J. Smith, Director of Operations, 12 March 2025",
)


def vocab_size(trained: int) -> int:
    """Embedding rows: the trained size rounded up to a multiple of 64, as real checkpoints pad."""
    return -(-trained // 64) * 64


def train(special_tokens: list[str]) -> Any:
    """Train a `tokenizers.Tokenizer`; special tokens get ids 0..n-1 in the given order."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so counts, not ties, decide most merges.
    tok.train_from_iterator([s for s in CORPUS for _ in range(3)], trainer)
    for i, t in enumerate(special_tokens):
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"special token {t!r} got id {tok.token_to_id(t)}, expected {i}")
    return tok


def tokenizer_json(special_tokens: list[str]) -> tuple[str, int]:
    """(tokenizer.json text, number of tokens)."""
    tok = train(special_tokens)
    return tok.to_str(pretty=True) + "\n", tok.get_vocab_size(with_added_tokens=True)
