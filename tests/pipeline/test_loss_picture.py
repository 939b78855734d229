"""The run's one loss picture: training and validation loss from TrainHistory's rows."""

import csv

from enumdist.pipeline.callbacks import TrainHistory, loss_figure


def test_loss_picture_shows_training_and_validation_loss(tmp_path):
    history = TrainHistory(str(tmp_path / "train_history.csv"))
    history.rows = [[1, 3.0, None], [2, 2.5, 2.8], [3, 2.2, None], [4, 2.0, 2.4]]
    figure = loss_figure(history.rows)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    train, valid = (lines[k] for k in ("training (this step's batch)", "validation (whole split)"))
    assert list(train.get_xdata()) == [1, 2, 3, 4] and list(train.get_ydata()) == [
        3.0,
        2.5,
        2.2,
        2.0,
    ]
    assert list(valid.get_xdata()) == [2, 4] and list(valid.get_ydata()) == [2.8, 2.4]
    history.write()
    history.plot()
    assert (tmp_path / "train_history.png").stat().st_size > 5000
    with open(tmp_path / "train_history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["valid_loss_per_obs"] for r in rows] == ["", "2.8", "", "2.4"]


def test_rows_of_an_older_checkpoint_gain_an_empty_validation_column(tmp_path):
    history = TrainHistory(str(tmp_path / "train_history.csv"))
    history.load_state_dict({"rows": [[1, 3.0], [2, 2.5]]})
    assert history.rows == [[1, 3.0, None], [2, 2.5, None]]
