"""Reading the CS224N files: synthetic error cases plus the real data."""

import os
from pathlib import Path

import numpy as np
import pytest

from mtl_jax.data import files
from mtl_jax.data.files import DataError, load_split

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

QUORA_HEADER = "\tid\tsentence1\tsentence2\tis_duplicate\n"


def write(tmp_path: Path, name: str, text: str) -> str:
  (tmp_path / name).write_text(text, encoding="utf-8")
  return str(tmp_path)


def quora(tmp_path: Path, *rows: str) -> str:
  return write(tmp_path, "quora-train.csv", QUORA_HEADER + "".join(rows))


def test_reads_by_column_name_and_strips(tmp_path):
  d = write(
    tmp_path,
    "ids-sst-train.csv",
    "\tid\tsentence\tsentiment\n0\ta1\t Good film .\t4\n1\ta2\t Bad .\t0\n",
  )
  s = load_split(d, "sst", "train")
  assert (s.ids, s.sentences1, s.sentences2) == (["a1", "a2"], ["Good film .", "Bad ."], None)
  assert s.labels.dtype == np.int32 and s.labels.tolist() == [4, 0]
  assert len(s) == 2 and s.skipped == []


def test_test_file_odd_header_has_no_labels(tmp_path):
  d = write(
    tmp_path,
    "ids-sst-test-student.csv",
    "0\t\tid\tsentence\n1\t0.0\tb1\t Effective\n2\t1.0\tb2\t Fun .\n",
  )
  s = load_split(d, "sst", "test")
  assert s.ids == ["b1", "b2"] and s.sentences1 == ["Effective", "Fun ."]
  assert s.labels is None


def test_pair_task_and_crlf(tmp_path):
  d = quora(tmp_path, "7\tq1\tA?\tB?\t1.0\r\n", "8\tq2\tC?\tD?\t0.0\r\n")
  s = load_split(d, "quora", "train")
  assert s.sentences2 == ["B?", "D?"]
  assert s.labels.dtype == np.float32 and s.labels.tolist() == [1.0, 0.0]


def test_malformed_rows_skipped_with_line_numbers(tmp_path, caplog):
  d = quora(
    tmp_path,
    "0\tq1\tA?\tB?\t1.0\n",  # line 2: ok
    '1\tq2\t"""Broken?"\t\t\n',  # line 3: empty sentence2 + label
    "2\tq3\tC?\tD?\tyes\n",  # line 4: unparsable label
    "3\tq4\tE?\tF?\n",  # line 5: too few fields
    "4\tq5\tG?\tH?\t0.0\n",
  )  # line 6: ok
  with caplog.at_level("WARNING"):
    s = load_split(d, "quora", "train")
  assert s.ids == ["q1", "q5"]
  assert [n for n, _ in s.skipped] == [3, 4, 5]
  assert "empty sentence2, is_duplicate" in s.skipped[0][1]
  assert "unparsable" in s.skipped[1][1] and "4 fields" in s.skipped[2][1]
  assert "skipped 3 malformed rows (lines 3, 4, 5)" in caplog.text


def test_a_file_whose_rows_are_all_malformed_says_why(tmp_path):
  """Every row malformed: the error names the first one's line and problem, and the count."""
  d = quora(tmp_path, "0\tq1\tA?\tB?\n", "1\tq2\tC?\tD?\n", "2\tq3\tE?\tF?\tmaybe\n")
  with pytest.raises(DataError) as e:
    load_split(d, "quora", "train")
  assert str(e.value) == (
    f"{tmp_path / 'quora-train.csv'}: no usable rows: all 3 rows are malformed, the first "
    "at line 2: 4 fields, expected 5; other problems: unparsable is_duplicate 'maybe'; "
    "fix the file (tab-separated, with the columns of its header)"
  )
  d = quora(tmp_path)  # A header and no rows.
  with pytest.raises(DataError, match="no usable rows: the file has no rows after its header"):
    load_split(d, "quora", "train")


STS_HEADER = "\tid\tsentence1\tsentence2\tsimilarity\n"


@pytest.mark.parametrize(
  "rows, limit, why",
  [
    (["0\ts1\tA.\tB.\t3.0\n"], None, "has 1 usable row:"),
    (["0\ts1\tA.\tB.\t3.0\n", "1\ts2\tC.\t\t2.0\n"], None, "has 1 usable row:"),
    (
      [f"{i}\ts{i}\tA.\tB.\t2.5\n" for i in range(3)],
      None,
      "has 3 rows whose similarity are all 2.5:",
    ),
    (
      ["0\ts1\tA.\tB.\t1.0\n", "1\ts2\tC.\tD.\t4.0\n"],
      1,
      "has 1 usable row (the first 1: config.data_limit):",
    ),
  ],
)
def test_a_dev_set_with_an_undefined_metric_is_refused_naming_the_file(tmp_path, rows, limit, why):
  """STS's Pearson correlation of one row, or of equal labels, is undefined: scored 0 it
  entered overall, the bootstrap and the best-checkpoint choice. Refused at load."""
  name = files.FILES["sts", "dev"]
  d = write(tmp_path, name, STS_HEADER + "".join(rows))
  with pytest.raises(DataError) as e:
    load_split(d, "sts", "dev", limit=limit)
  assert str(e.value).startswith(
    f"{tmp_path / name}: the sts dev set {why} its metric, the Pearson"
  )
  assert "use a dev file with at least 2 rows of different similarity" in str(e.value)
  write(tmp_path, files.FILES["sts", "train"], STS_HEADER + "".join(rows))
  assert len(load_split(d, "sts", "train", limit=limit)) >= 1  # A training set may.


def test_an_accuracy_dev_set_left_empty_by_malformed_rows_is_refused(tmp_path):
  name = files.FILES["quora", "dev"]
  d = write(tmp_path, name, QUORA_HEADER + "0\tq1\tA?\tB?\tyes\n")
  with pytest.raises(
    DataError, match=r"no usable rows: all 1 rows are malformed, the first at line 2"
  ):
    load_split(d, "quora", "dev")


def test_strict_refuses_first_malformed_row(tmp_path):
  d = quora(tmp_path, "0\tq1\tA?\tB?\t1.0\n", "1\tq2\tA?\tB?\t\n", "2\tq3\tA?\t\t1.0\n")
  with pytest.raises(DataError, match=r"quora-train\.csv:3: .*empty is_duplicate"):
    load_split(d, "quora", "train", strict=True)


def test_multiline_quoted_field_line_numbers(tmp_path):
  d = quora(
    tmp_path,
    '0\tq1\t"A\nspanning\nquestion?"\tB?\t1.0\n',  # lines 2-4: valid
    "1\tq2\tC?\t\t0.0\n",  # line 5: empty sentence2
    '2\tq3\t"unclosed\tD?\t0.0\n',  # line 6: quote swallows the rest
    "3\tq4\tE?\tF?\t0.0\n",
  )
  s = load_split(d, "quora", "train")
  assert s.ids == ["q1"] and s.sentences1 == ["A\nspanning\nquestion?"]
  assert [n for n, _ in s.skipped] == [5, 6]
  assert "spans lines 6-7" in s.skipped[1][1]


def test_unclosed_quote_that_takes_in_whole_rows_is_skipped_and_its_lines_reported(
  tmp_path, caplog
):
  """The quote opens in sentence1 of line 3 and closes in line 6's sentence1: the record
  has the right field count, but its field holds the rows of lines 4-5 (tabs)."""
  d = quora(
    tmp_path,
    "0\tq1\tA?\tB?\t1.0\n",
    '1\tq2\t"C?\tD?\t0.0\n',
    "2\tq3\tE?\tF?\t0.0\n",
    "3\tq4\tG?\tH?\t1.0\n",
    '4\tq5\tI?"\tJ?\t0.0\n',
    "5\tq6\tK?\tL?\t1.0\n",
  )
  s = load_split(d, "quora", "train")
  assert s.ids == ["q1", "q6"]
  assert s.skipped[0][0] == 3 and "holds a tab" in s.skipped[0][1]
  assert "skipped 1 malformed rows (lines 3-6; 4 lines in all)" in caplog.text


def test_byte_order_mark_is_ignored(tmp_path):
  (tmp_path / "ids-sst-train.csv").write_text(
    "id\tsentence\tsentiment\na1\tGood .\t4\n", encoding="utf-8-sig"
  )
  s = load_split(str(tmp_path), "sst", "train")
  assert s.ids == ["a1"] and s.labels.tolist() == [4]


@pytest.mark.parametrize(
  "task,label",
  [("sst", "5"), ("sst", "-1"), ("sst", "2.5"), ("quora", "2.0"), ("sts", "5.5"), ("sts", "nan")],
)
def test_label_out_of_range_is_an_error_even_when_not_strict(tmp_path, task, label):
  if task == "sst":
    d = write(
      tmp_path, "ids-sst-train.csv", f"\tid\tsentence\tsentiment\n0\ta\tok\t1\n1\tb\tx\t{label}\n"
    )
  else:
    name, col = {
      "quora": ("quora-train.csv", "is_duplicate"),
      "sts": ("sts-train.csv", "similarity"),
    }[task]
    d = write(tmp_path, name, f"\tid\tsentence1\tsentence2\t{col}\n0\tb\tx\ty\t{label}\n")
  with pytest.raises(DataError, match=r"-train\.csv:\d: .*out of range"):
    load_split(d, task, "train")


def test_sts_labels_at_bounds_are_fine(tmp_path):
  d = write(
    tmp_path,
    "sts-dev.csv",
    "\tid\tsentence1\tsentence2\tsimilarity\n0\ta\tx\ty\t0.0\n1\tb\tx\ty\t5.0\n",
  )
  assert load_split(d, "sts", "dev").labels.tolist() == [0.0, 5.0]


def test_missing_file_names_path_and_config_key(tmp_path):
  with pytest.raises(DataError, match=r"sts-dev\.csv.*--config\.data_dir"):
    load_split(str(tmp_path / "nowhere"), "sts", "dev")


def test_missing_column_lists_found_columns(tmp_path):
  d = write(tmp_path, "sts-dev.csv", "\tid\tsentence1\tsentence2\tscore\n0\ta\tx\ty\t1\n")
  with pytest.raises(DataError, match=r"sts-dev\.csv: missing column.*similarity.*score"):
    load_split(d, "sts", "dev")


@pytest.mark.parametrize("text", ["", "\tid\tsentence\tsentiment\n"])
def test_empty_file(tmp_path, text):
  d = write(tmp_path, "ids-sst-dev.csv", text)
  with pytest.raises(DataError, match=r"ids-sst-dev\.csv"):
    load_split(d, "sst", "dev")


def test_unknown_task_or_split(tmp_path):
  with pytest.raises(DataError, match=r"task quora has no test file .*quora-dev\.csv"):
    load_split(str(tmp_path), "quora", "test")
  with pytest.raises(DataError, match="unknown task"):
    load_split(str(tmp_path), "mnli", "train")


def test_duplicate_ids_kept_with_warning(tmp_path, caplog):
  d = write(tmp_path, "ids-sst-dev.csv", "\tid\tsentence\tsentiment\n0\ta\tx\t1\n1\ta\ty\t2\n")
  with caplog.at_level("WARNING"):
    assert load_split(d, "sst", "dev").ids == ["a", "a"]
  assert "duplicate ids" in caplog.text


def test_limit_counts_valid_rows(tmp_path):
  d = quora(
    tmp_path,
    "0\tq1\tA?\tB?\t1.0\n",
    "1\tq2\tA?\t\t1.0\n",
    "2\tq3\tA?\tB?\t0.0\n",
    "3\tq4\tA?\tB?\t0.0\n",
  )
  s = load_split(d, "quora", "train", limit=2)
  assert s.ids == ["q1", "q3"] and s.skipped == [(3, "empty sentence2")]


def test_default_data_dir(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  repo_root = Path(files.__file__).resolve().parents[2]
  # Compare real paths: ../shared may be a symbolic link.
  assert os.path.realpath(files.default_data_dir()) == os.path.realpath(
    repo_root / ".." / "shared" / "data"
  )
  (tmp_path / "data").mkdir()
  assert files.default_data_dir() == str(tmp_path / "data")


def test_default_data_dir_of_an_installed_package_is_the_local_one(tmp_path, monkeypatch):
  """Installed in site-packages there is no checkout beside it: `./data`, missing or not."""
  site = tmp_path / "site-packages" / "mtl_jax" / "data"
  site.mkdir(parents=True)
  monkeypatch.setattr(files, "__file__", str(site / "files.py"))
  monkeypatch.chdir(tmp_path)
  assert files.default_data_dir() == str(tmp_path / "data")


# Row counts from the data README, minus the rows known to be malformed.
REAL_COUNTS = {
  ("sst", "train"): 8544,
  ("sst", "dev"): 1101,
  ("sst", "test"): 2210,
  ("quora", "train"): 16214 - 2,
  ("quora", "dev"): 3000,
  ("sts", "train"): 6040,
  ("sts", "dev"): 863,
  ("sts", "test"): 1725,
}


@pytest.mark.parametrize("task,split", sorted(REAL_COUNTS))
def test_real_files(task, split):
  if not REAL_DATA.is_dir():
    pytest.skip(f"no real data at {REAL_DATA}")
  s = load_split(str(REAL_DATA), task, split)
  assert len(s) == REAL_COUNTS[(task, split)]
  assert len(set(s.ids)) == len(s)
  assert all(s.sentences1) and (s.sentences2 is None) == (task == "sst")
  if split == "test":
    assert s.labels is None
  else:
    assert s.labels.shape == (len(s),)
  if (task, split) == ("quora", "train"):
    assert [n for n, _ in s.skipped] == [784, 13373]
    with pytest.raises(DataError, match=r"quora-train\.csv:784:"):
      load_split(str(REAL_DATA), task, split, strict=True)
  else:
    assert s.skipped == []


def test_unreadable_csv_names_file_and_line(tmp_path):
  # An unclosed quote swallowing more than csv's field size limit.
  d = quora(tmp_path, "0\tq1\tA?\tB?\t1.0\n", '1\tq2\t"' + "x " * 100_000 + "\n")
  with pytest.raises(DataError, match=r"quora-train\.csv:\d+: unreadable CSV"):
    load_split(d, "quora", "train")
