"""The decoding stage's pictures: written, and drawn from the right data."""

import pyarrow.parquet as pq
import torch
from decoding_run_dirs import make_mixture_run_dir, make_run_dir, piano_rolls

import enumdist
import enumdist.decoding.stage as stage
from enumdist.decoding import pictures, run_decoding

OPTIONS = {"decode_batch_size": 2, "progress": False, "marginals": True}


def test_piano_roll_has_pitch_names_state_legend_and_title():
    roll = torch.zeros(6, 88)
    roll[torch.arange(6), 39 + torch.arange(6)] = 1  # C4 .. F4 (MIDI 60 .. 65)
    states = {"x": torch.tensor([0, 0, 2, 2, 1, 3])}
    figure = pictures.piano_roll_figure(roll, states, {"x": 4}, title="bwv1.6.mxl")
    keys, strip = figure.axes[:2]
    assert keys.get_title() == "bwv1.6.mxl"
    # cut to the played keys plus one each side, in pitch order
    torch.testing.assert_close(torch.tensor(keys.images[0].get_array()), roll[:, 38:46].T)
    assert [t.get_text() for t in keys.get_yticklabels()] == ["B3", "C4", "D4", "E4", "F4"]
    assert [t for t in keys.get_yticks()] == [38, 39, 41, 43, 44]  # naturals, at their rows
    assert [t.get_text() for t in strip.get_legend().get_texts()] == [f"x={s}" for s in range(4)]
    assert torch.equal(torch.tensor(strip.images[0].get_array()).flatten(), states["x"])


def test_second_order_transitions_get_one_panel_per_previous_state():
    model = enumdist.models.SecondOrderHMM(num_keys=3, hidden_dim=3, seed=1)
    figure = pictures.transition_figure(model.transition_matrices(), model.transition_conditions())
    panels = [axis for axis in figure.axes if axis.images and axis.get_title()]
    assert [p.get_title() for p in panels] == [f"p(x_t | x_t-1, x_{{t-2}}={i})" for i in range(3)]
    for i, panel in enumerate(panels):  # each panel is its own slice, not an average
        torch.testing.assert_close(
            torch.tensor(panel.images[0].get_array()), model.transition.detach()[i]
        )


def test_marginals_picture_shows_the_marginals_and_the_decoded_path():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    figure = pictures.marginals_figure({"x": probs}, {"x": torch.tensor([0, 1, 0])}, title="t")
    axis = figure.axes[0]
    torch.testing.assert_close(torch.tensor(axis.images[0].get_array()), probs.T)
    assert list(axis.get_lines()[0].get_ydata()) == [0, 1, 0]


def test_the_stage_draws_each_picture_of_the_named_first_item(tmp_path, monkeypatch):
    rolls = piano_rolls(3)
    rolls["names"] = ["bwv1.6.mxl", "bwv2.6.mxl", "bwv3.6.mxl"]
    run_dir, model = make_run_dir(tmp_path, model_cls="SecondOrderHMM", test_split=rolls)
    titles, real_save = {}, pictures.save

    def save_and_record(figure, path):
        titles[path.name] = [axis.get_title() for axis in figure.axes if axis.get_title()]
        return real_save(figure, path)

    monkeypatch.setattr(pictures, "save", save_and_record)
    outputs = run_decoding(run_dir, OPTIONS)
    for name in ("transitions", "piano_roll", "marginals"):
        assert outputs[name].stat().st_size > 5000, name
    assert titles["piano_roll_states.png"] == ["bwv1.6.mxl (test item 0): decoded hidden states"]
    assert titles["marginals.png"] == ["bwv1.6.mxl (test item 0): posterior marginals"]
    assert len(titles["transitions.png"]) == model.hidden_dim
    assert not (run_dir / "loss_curve.png").exists()  # the loss picture is training's
    rows = pq.read_table(outputs["decoded"]).to_pylist()
    assert [r["name"] for r in rows] == rolls["names"]


def test_a_mixture_gets_a_marginals_picture_over_its_items(tmp_path, monkeypatch):
    run_dir, _, _ = make_mixture_run_dir(tmp_path)
    drawn, real_figure = [], pictures.marginals_figure

    def record(marginals, states, **kwargs):
        drawn.append((marginals, states))
        return real_figure(marginals, states, **kwargs)

    monkeypatch.setattr(stage.pictures, "marginals_figure", record)
    outputs = run_decoding(run_dir, OPTIONS)
    assert outputs["marginals"].stat().st_size > 5000
    rows = pq.read_table(outputs["decoded"]).to_pylist()
    ((marginals, states),) = drawn
    torch.testing.assert_close(
        marginals["assignment"], torch.tensor([r["assignment_marginals"][0] for r in rows])
    )
    assert states["assignment"].tolist() == [r["assignment"][0] for r in rows]
