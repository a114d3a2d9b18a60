"""The three CS224N tasks and a fourth, CFIMDB (binary movie-review sentiment, the
starter's warm-up task, in ../shared/data as ids-cfimdb-{train,dev,test-student}.csv),
declared in a few lines: the example of docs/tasks.md.

Run:   python main.py --config=configs/four_tasks.py --workdir=runs/four_tasks
Everything else is configs/default.py's; overall is the mean of the four tasks'
normalised dev metrics (docs/tasks.md).
"""

from mtl_jax.config.defaults import add_task
from mtl_jax.config.defaults import get_config as default_config


def get_config():
  config = default_config()
  add_task(
    config,
    "cfimdb",
    files={
      "train": "ids-cfimdb-train.csv",
      "dev": "ids-cfimdb-dev.csv",
      "test": "ids-cfimdb-test-student.csv",
    },
    sentence_columns=("sentence",),
    label_column="sentiment",
    label="class",  # Two classes, as the starter's classifier trains it (a softmax).
    num_classes=2,
    prediction_column="Predicted_Sentiment",
  )
  return config
