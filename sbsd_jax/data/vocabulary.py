"""The vocabularies the tasks tokenise with: SeqIO bytes, or a checkpoint's SentencePiece model.

The reference joins NLI premise and hypothesis with the literal EOS string (`"</s>"`), and its
Hugging Face tokenizer turns that string into the EOS id. SentencePiece itself would spell it
as ordinary pieces ('<', '/', 's', '>'), so `EosStringSentencePieceVocabulary` splits the text on
the EOS string, encodes each part on its own (so each part starts a new word, as in HF) and puts
the EOS id between them. The byte vocabulary keeps the string as its 4 bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from sbsd_jax.data.tensorflow_runtime import import_tensorflow

tf = import_tensorflow()

import seqio  # noqa: E402  (after TensorFlow is imported with accelerators hidden)

BYTE_VOCABULARY_SPEC = "byte"
WORD_VOCABULARY_SPEC = "word"  # the demo's: a word-level SentencePiece model of its training texts


class EosStringSentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """SentencePiece vocabulary where the EOS piece string in the text becomes the EOS id.

    Encoding 'premise</s>hypothesis' gives sp('premise') + [eos] + sp('hypothesis'), the same
    ids as Hugging Face's T5 tokenizer (checked against transformers.T5Tokenizer on the same
    model). Text without the EOS string encodes exactly as the plain SentencePieceVocabulary.
    """

    @property
    def eos_string(self) -> str:
        return self.tokenizer.id_to_piece(self.eos_id)

    def _encode(self, s: str) -> Sequence[int]:
        ids: list[int] = []
        for index, part in enumerate(s.split(self.eos_string)):
            if index:
                ids.append(self.eos_id)
            ids.extend(super()._encode(part))
        return ids

    def _encode_tf(self, s):
        if s.shape.rank != 0:
            # One string at a time; seqio tokenises examples one by one.
            return tf.map_fn(
                self._encode_tf,
                s,
                fn_output_signature=tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0),
            )
        parts = tf.strings.split(s, sep=self.eos_string)  # [n] strings, n >= 1
        part_ids = tf.cast(super()._encode_tf(parts), tf.int32)  # ragged [n, None]
        eos = tf.fill([tf.shape(parts)[0], 1], tf.constant(self.eos_id, tf.int32))
        with_eos = tf.concat([part_ids, tf.RaggedTensor.from_tensor(eos)], axis=1)
        return with_eos.flat_values[:-1]  # EOS after every part but the last

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EosStringSentencePieceVocabulary) and super().__eq__(other)

    def __hash__(self) -> int:
        return hash(self.sentencepiece_model_file)


def make_vocabulary(spec: str) -> seqio.Vocabulary:
    """'byte' -> seqio.ByteVocabulary (from-scratch runs); a path -> the checkpoint's SentencePiece
    model, with the EOS string mapped to the EOS id as HF's tokenizer does."""
    if spec == BYTE_VOCABULARY_SPEC:
        return seqio.ByteVocabulary()
    if spec == WORD_VOCABULARY_SPEC:
        raise ValueError(
            "vocabulary 'word' is trained by the demo (python -m sbsd_jax.experiments.demo) on "
            "its training split; to train one student with sbsd_jax.main, pass "
            "--config.vocabulary=<demo workdir>/data/vocabulary.model"
        )
    if not spec or not os.path.isfile(spec):
        raise ValueError(
            f"vocabulary {spec!r} is neither 'byte' nor an existing SentencePiece model file"
        )
    vocabulary = EosStringSentencePieceVocabulary(spec)
    if vocabulary.eos_id != 1 or vocabulary.tokenizer.pad_id() not in (0, -1):
        raise ValueError(
            f"SentencePiece model {spec}: T5 needs pad id 0 and EOS id 1, got pad "
            f"{vocabulary.tokenizer.pad_id()} and EOS {vocabulary.eos_id}"
        )
    return vocabulary


def vocabulary_description(vocabulary: seqio.Vocabulary) -> str:
    """A stable string that changes when the tokenisation changes (for data fingerprints)."""
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        digest = hashlib.sha256(vocabulary.sp_model).hexdigest()[:16]
        return f"{type(vocabulary).__name__}(sha256={digest}, extra_ids={vocabulary.extra_ids})"
    return f"{type(vocabulary).__name__}(size={vocabulary.vocab_size})"


def train_word_vocabulary(texts: Sequence[str], path_prefix: str) -> str:
    """A word-level SentencePiece model of `texts` (T5 ids: pad 0, EOS 1, unk 2); returns the
    model file. For students trained from scratch on a small, closed vocabulary (the demo's
    synthetic world): each word one id, so a made-up name is one embedding row. Train it on the
    training split only, so nothing about valid or test leaks into the tokens."""
    import sentencepiece

    os.makedirs(os.path.dirname(path_prefix) or ".", exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=path_prefix,
        model_type="word",
        vocab_size=max(8, len({w for text in texts for w in text.split()}) + 8),
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        user_defined_symbols=["predict:", "explain:"],
        minloglevel=2,
    )
    return path_prefix + ".model"
