"""mtl_jax.embed: reading the input file, embedding with the tiny BERT, and the CLI."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mtl_jax.models.bert import BertEncoder
from mtl_jax.tools import cli, embed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SENTENCES = [
  "The cat sat on the mat.",
  "a dog",
  "what is this movie ?",
  "very very good",
  "it was not bad",
  "dogs and cats",
]
PAIRS = [
  ("how do you do ?", "what is that"),
  ("the cat", "the cat sat ."),
  ("good movie", "the cat sat on the mat and the dog sat on the mat"),
]


def _write(tmp_path, text: str, name: str = "in.txt") -> str:
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return str(path)


# --------------------------------------------------------------------------
# read_lines
# --------------------------------------------------------------------------


def test_read_lines_single_sentences(tmp_path):
  path = _write(tmp_path, "first one\n\nsecond  one \n   \nthird\n")
  first, second = embed.read_lines(path)
  assert second is None
  assert len(first) == 5  # Row i is line i: blank lines are empty sentences.
  assert first[0] == "first one" and first[4] == "third"
  assert first[2].strip() == "second  one"
  assert first[1] == "" and first[3].strip() == ""


def test_read_lines_no_trailing_newline(tmp_path):
  first, second = embed.read_lines(_write(tmp_path, "a b\nc d"))
  assert first == ["a b", "c d"] and second is None


def test_read_lines_tab_pairs(tmp_path):
  path = _write(tmp_path, "a cat\ta dog\nthe mat\tthe hat\n")
  first, second = embed.read_lines(path)
  assert first == ["a cat", "the mat"]
  assert second == ["a dog", "the hat"]


def test_read_lines_more_than_one_tab_raises(tmp_path):
  path = _write(tmp_path, "ok\tfine\na\tb\tc\n")
  with pytest.raises(ValueError, match="2"):  # Names the offending line.
    embed.read_lines(path)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_read_lines_empty_file_raises(tmp_path, text):
  with pytest.raises(ValueError, match="empty"):
    embed.read_lines(_write(tmp_path, text))


def test_read_lines_missing_file_raises(tmp_path):
  with pytest.raises(FileNotFoundError):
    embed.read_lines(str(tmp_path / "nope.txt"))


# --------------------------------------------------------------------------
# embed()
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir):
  return embed.load_encoder(tiny_bert_dir, None, None)


@pytest.fixture(scope="module")
def direct(encoder):
  """BertEncoder applied directly (one jitted function, shared by the tests)."""
  model, params, _ = encoder
  run = jax.jit(lambda p, *x: BertEncoder(model.config).apply({"params": p}, *x))
  return lambda a: np.asarray(
    run(params["encoder"], a["input_ids"], a["attention_mask"], a["token_type_ids"])
  )


def _check_arrays(arrays, n, hidden=32):
  assert set(arrays) == {
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "last_hidden_state",
    "pooled",
  }
  length = arrays["input_ids"].shape[1]
  for k in ("input_ids", "attention_mask", "token_type_ids"):
    assert arrays[k].shape == (n, length), k
    assert arrays[k].dtype == np.int32, k
  assert arrays["last_hidden_state"].shape == (n, length, hidden)
  assert arrays["last_hidden_state"].dtype == np.float32
  assert arrays["pooled"].shape == (n, hidden) and arrays["pooled"].dtype == np.float32
  mask = arrays["attention_mask"]
  assert mask[:, 0].all() and mask.sum(1).max() == length  # Padded to the longest line.
  assert (arrays["input_ids"][mask == 0] == 0).all()
  assert np.isfinite(arrays["last_hidden_state"]).all()


@pytest.fixture(scope="module")
def sentence_arrays(encoder):
  """embed() of SENTENCES, 4 a forward pass (so the last chunk is padded with rows)."""
  model, params, tokenizer = encoder
  return embed.embed(model, params, tokenizer, SENTENCES, None, max_length=32, batch_size=4)


def test_embed_sentences(sentence_arrays, direct):
  arrays = sentence_arrays
  _check_arrays(arrays, len(SENTENCES))
  mask = arrays["attention_mask"]
  assert len(set(mask.sum(1).tolist())) > 1  # Mixed lengths, so padding is exercised.
  assert (arrays["token_type_ids"] == 0).all()
  assert (arrays["input_ids"][:, 0] == 2).all()  # [CLS] in the test vocab.
  # All rows at once, directly through the encoder: the chunking must not matter.
  want = direct(arrays)
  real = mask.astype(bool)
  np.testing.assert_allclose(arrays["last_hidden_state"][real], want[real], atol=1e-5, rtol=0)
  # Default pooling is the mean over real tokens.
  m = mask[..., None].astype(np.float32)
  mean = (arrays["last_hidden_state"] * m).sum(1) / m.sum(1)
  np.testing.assert_allclose(arrays["pooled"], mean, atol=1e-5, rtol=0)


def test_embed_pairs_have_token_types(encoder, direct):
  model, params, tokenizer = encoder
  first, second = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
  max_length = 12  # The last pair is longer and gets truncated.
  arrays = embed.embed(model, params, tokenizer, first, second, max_length=max_length, batch_size=2)
  _check_arrays(arrays, len(PAIRS))
  ids, mask, tt = arrays["input_ids"], arrays["attention_mask"], arrays["token_type_ids"]
  assert ids.shape[1] == max_length
  sep = 3  # [SEP] in the test vocab.
  for i in range(len(PAIRS)):
    n = int(mask[i].sum())
    seps = np.flatnonzero(ids[i, :n] == sep)
    assert len(seps) == 2 and seps[1] == n - 1  # [CLS] a [SEP] b [SEP]
    assert seps[1] - seps[0] > 1  # A non-empty second segment.
    np.testing.assert_array_equal(tt[i, : seps[0] + 1], 0)
    np.testing.assert_array_equal(tt[i, seps[0] + 1 : n], 1)
    assert (tt[i, n:] == 0).all()
  want = direct(arrays)
  real = mask.astype(bool)
  np.testing.assert_allclose(arrays["last_hidden_state"][real], want[real], atol=1e-5, rtol=0)
  # Token types matter: the same ids as one segment give different states.
  as_single = dict(arrays, token_type_ids=np.zeros_like(tt))
  assert np.abs(direct(as_single)[real] - want[real]).max() > 1e-3


def test_pairs_need_a_second_token_type(encoder):
  model, params, tokenizer = encoder
  one_type = model.clone(config=dataclasses.replace(model.config, type_vocab_size=1))
  with pytest.raises(ValueError, match="type_vocab_size=1"):
    embed.embed(one_type, params, tokenizer, ["a"], ["b"], max_length=8)


def test_load_encoder_needs_a_model():
  with pytest.raises(Exception, match="--model"):
    embed.load_encoder(None, None, None)


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [["--max_length", "32"], []])
def test_cli_writes_npz(tiny_bert_dir, tmp_path, sentence_arrays, max_length):
  """Without --max_length, the tiny model's 64 positions bound the default (128 is refused
  for it); the sentences are shorter than either, so the arrays are the same."""
  inp = _write(tmp_path, "\n".join(SENTENCES) + "\n")
  out = tmp_path / "sub" / "out.npz"  # The directory does not exist yet.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "mtl_jax.embed",
      "--model",
      tiny_bert_dir,
      "--input",
      inp,
      "--output",
      str(out),
      *max_length,
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert out.is_file()
  with np.load(out, allow_pickle=False) as f:
    got = {k: f[k] for k in f.files}
  _check_arrays(got, len(SENTENCES))
  for k, want in sentence_arrays.items():
    np.testing.assert_allclose(got[k], want, atol=1e-5, rtol=0, err_msg=k)


def test_a_full_disk_is_one_error_line_and_leaves_no_partial_file(
  tiny_bert_dir, tmp_path, monkeypatch, capsys
):
  """No space left while writing the .npz: one `error:` line (it was an OSError traceback),
  no partial file, and an earlier output left as it was."""
  inp = _write(tmp_path, "a cat\n")
  out = tmp_path / "out" / "e.npz"
  out.parent.mkdir()
  out.write_bytes(b"earlier")

  def full(f, **arrays):
    f.write(b"PK partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(embed.np, "savez", full)
  args = ["embed", f"--model={tiny_bert_dir}", f"--input={inp}", f"--output={out}"]
  assert cli.call(embed.main, embed.FLAGS, args) == 1
  err = capsys.readouterr().err
  assert err == (
    f"error: cannot write --output={out}: No space left on device; nothing was written (an "
    "earlier file there is as it was): free some space or choose another --output\n"
  )
  assert os.listdir(out.parent) == ["e.npz"] and out.read_bytes() == b"earlier"


def test_read_lines_mixed_pairs_and_singles_raises(tmp_path):
  path = tmp_path / "mixed.txt"
  path.write_text("a\tb\nno tab here\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"lines \[2\] have no tab"):
    embed.read_lines(str(path))
