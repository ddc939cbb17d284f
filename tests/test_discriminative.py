"""The discriminative method (Hiley et al., 2019) against a direct computation.

The reference explains the clip and then every frozen clip one at a time with
``relgraph.explain``, and reduces, normalises and subtracts with plain NumPy loops, one map
at a time: no code of ``relgraph.methods.discriminative`` is reused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import relgraph
from relgraph import discriminative
from relgraph.errors import RelgraphError, ShapeError
from relgraph.methods.discriminative import DEFAULT_BATCH_SIZE, frozen_clips

FRAMES = 16
SIZE = 16


@pytest.fixture(scope="module")
def graph():
    # C3D's topology at its smallest: every test here explains hundreds of clips.
    return relgraph.load_architecture(
        "c3d-tiny", width=2, hidden=16, size=SIZE, dtype=torch.float64, seed=3
    )


@pytest.fixture(scope="module")
def clips(graph):
    # Two clips in the range of mean-subtracted pixels, with a bright square moving right, so
    # that the frames differ from one another.
    generator = torch.Generator().manual_seed(0)
    shape = (2, *graph.input_shape)
    clips = torch.rand(shape, generator=generator, dtype=torch.float64) * 255 - 100
    for t in range(FRAMES):
        clips[:, :, t, 4:8, t // 2 : t // 2 + 4] = 150.0
    return clips


def explain_one(graph, clip, target, **kwargs) -> np.ndarray:
    """Relevance of one clip ``(C, T, H, W)`` for ``target``, via the public explain."""
    relevance = relgraph.explain(graph, clip[None], target=int(target), **kwargs)
    return relevance[0].numpy()


def reference_relevance(graph, clips, targets, **kwargs):
    """Raw relevance of each clip and of each frozen clip, one explanation at a time."""
    clip_relevance, frozen_relevance = [], []
    for b, clip in enumerate(clips):
        clip_relevance.append(explain_one(graph, clip, targets[b], **kwargs))
        per_frame = []
        for t in range(clip.shape[1]):
            frozen_clip = clip[:, t : t + 1].repeat(1, clip.shape[1], 1, 1)  # frame t, T times
            per_frame.append(explain_one(graph, frozen_clip, targets[b], **kwargs))
        frozen_relevance.append(per_frame)
    return np.array(clip_relevance), np.array(frozen_relevance)


def scaled(relevance_map: np.ndarray, normalize: str) -> np.ndarray:
    if normalize == "maxabs":
        peak = np.abs(relevance_map).max()
        return relevance_map / peak if peak > 0 else relevance_map * 0
    if normalize == "sum":
        total = abs(relevance_map.sum())
        return relevance_map / total if total > 0 else relevance_map * 0
    return relevance_map


def reference_maps(clip_relevance, frozen_relevance, reduce, normalize):
    """Spatio-temporal, spatial and temporal maps, computed map by map."""
    spatiotemporal, spatial = [], []
    for b in range(len(clip_relevance)):
        spatiotemporal.append(scaled(clip_relevance[b].sum(axis=0), normalize))
        frames = []
        for t in range(frozen_relevance.shape[1]):
            frozen_map = scaled(frozen_relevance[b, t].sum(axis=0), normalize)  # (T, H, W)
            frames.append(
                {
                    "first": frozen_map[0],
                    "same": frozen_map[t],
                    "mean": frozen_map.mean(axis=0),
                    "sum": frozen_map.sum(axis=0),
                }[reduce]
            )
        spatial.append(frames)
    spatiotemporal, spatial = np.array(spatiotemporal), np.array(spatial)
    return spatiotemporal, spatial, spatiotemporal - spatial


@pytest.fixture(scope="module")
def predicted(graph, clips):
    return graph.forward(clips).output.argmax(dim=1)


@pytest.fixture(scope="module")
def reference(graph, clips, predicted):
    return reference_relevance(graph, clips, predicted.tolist())


@pytest.fixture(scope="module")
def result(graph, clips):
    return discriminative(graph, clips, progress=False)


def close(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- the maths


def test_default_maps_equal_explaining_each_frozen_clip_one_by_one(result, reference):
    st, sp, te = reference_maps(*reference, reduce="first", normalize="maxabs")
    close(result.spatiotemporal, st)
    close(result.spatial, sp)
    close(result.temporal, te)


@pytest.mark.parametrize("normalize", ["maxabs", "sum", "none"])
@pytest.mark.parametrize("reduce", ["first", "same", "mean", "sum"])
def test_each_reduce_and_normalize_option_equals_the_direct_computation(
    graph, clips, reference, reduce, normalize
):
    first_clip = [r[:1] for r in reference]
    result = discriminative(graph, clips[:1], reduce=reduce, normalize=normalize, progress=False)
    st, sp, te = reference_maps(*first_clip, reduce=reduce, normalize=normalize)
    close(result.spatiotemporal, st)
    close(result.spatial, sp)
    close(result.temporal, te)
    assert result.options["reduce"] == reduce
    assert result.options["normalize"] == normalize


def test_raw_relevances_are_channel_resolved_clip_and_full_frozen_relevance(result, reference):
    clip_relevance, frozen_relevance = reference
    assert result.relevance.shape == (2, 3, FRAMES, SIZE, SIZE)
    assert result.frozen_relevance.shape == (2, FRAMES, 3, FRAMES, SIZE, SIZE)
    close(result.relevance, clip_relevance)
    close(result.frozen_relevance, frozen_relevance)


def test_temporal_map_is_spatiotemporal_minus_spatial_frame_by_frame(result):
    for t in range(FRAMES):
        torch.testing.assert_close(
            result.temporal[:, t], result.spatiotemporal[:, t] - result.spatial[:, t]
        )


def test_maxabs_maps_the_clip_once_to_unit_peak_and_the_temporal_map_into_minus2_2(result):
    peaks = result.spatiotemporal.abs().amax(dim=(1, 2, 3))
    torch.testing.assert_close(peaks, torch.ones(2, dtype=torch.float64))
    assert result.spatial.abs().max() <= 1
    assert result.temporal.abs().max() <= 2


def test_sum_normalisation_gives_each_clip_unit_total_relevance(graph, clips):
    result = discriminative(graph, clips[:1], normalize="sum", progress=False)
    totals = result.spatiotemporal.sum(dim=(1, 2, 3))
    torch.testing.assert_close(totals.abs(), torch.ones(1, dtype=torch.float64))


def test_frozen_clips_are_explained_for_the_clip_target_not_their_own_prediction(
    graph, clips, predicted
):
    targets = [(int(p) + 1) % graph.num_classes for p in predicted]  # never the prediction
    result = discriminative(graph, clips, target=targets, progress=False)
    st, sp, te = reference_maps(
        *reference_relevance(graph, clips, targets), reduce="first", normalize="maxabs"
    )
    assert result.target.tolist() == targets
    assert result.prediction.tolist() == predicted.tolist()
    close(result.spatial, sp)
    close(result.temporal, te)


def test_class_names_are_accepted_as_targets_with_labels(graph, clips):
    names = ["walk", "run", "jump", "swim"]
    result = discriminative(graph, clips[:1], target="jump", labels=names, progress=False)
    assert result.target.tolist() == [2]


def test_other_rules_and_seed_are_passed_to_every_explanation(graph, clips, predicted):
    one_clip = clips[:1]
    result = discriminative(
        graph,
        one_clip,
        rules="deep-taylor-2020",
        output_relevance="logit",
        normalize="none",
        progress=False,
    )
    clip_relevance, frozen_relevance = reference_relevance(
        graph, one_clip, predicted[:1].tolist(), rules="deep-taylor-2020", output_relevance="logit"
    )
    close(result.relevance, clip_relevance)
    # reduce first, normalize none: the frozen-clip shortcut explains slice 0 alone
    close(result.frozen_relevance[:, :, :, 0], frozen_relevance[:, :, :, 0])
    assert not result.frozen_relevance[:, :, :, 1:].any()
    assert result.options["rules"] == "deep-taylor-2020"
    assert result.options["output_relevance"] == "logit"


# --------------------------------------------------------------------------- batching


@pytest.fixture(scope="module")
def one_at_a_time(graph, clips):
    return discriminative(graph, clips, batch_size=1, progress=False)


@pytest.mark.parametrize("batch_size", sorted({3, DEFAULT_BATCH_SIZE, 17, 64}))
def test_batch_size_chunking_gives_the_results_of_batch_size_1(
    graph, clips, result, one_at_a_time, batch_size
):
    # 3 and 17 make batches that straddle two clips; 64 runs all 32 frozen clips at once;
    # the default batch size is the `result` fixture's.
    chunked = (
        result
        if batch_size == 8
        else discriminative(graph, clips, batch_size=batch_size, progress=False)
    )
    for name in ("spatiotemporal", "spatial", "temporal", "frozen_relevance", "frozen_output"):
        torch.testing.assert_close(getattr(chunked, name), getattr(one_at_a_time, name))
    assert torch.equal(chunked.frozen_predictions, one_at_a_time.frozen_predictions)
    assert chunked.options["batch_size"] == batch_size


def test_default_batch_size_is_the_measured_module_constant(result):
    assert result.options["batch_size"] == DEFAULT_BATCH_SIZE


# --------------------------------------------------------------------------- predictions


def test_frozen_predictions_equal_the_model_on_frozen_clips(graph, clips, result):
    for b in range(len(clips)):
        for t in range(FRAMES):
            frozen_clip = clips[b : b + 1, :, t : t + 1].expand(-1, -1, FRAMES, -1, -1)
            logits = graph.forward(frozen_clip.contiguous()).output[0]
            probabilities = torch.softmax(logits, dim=0)
            assert result.frozen_predictions[b, t] == logits.argmax()
            torch.testing.assert_close(result.frozen_probabilities[b, t], probabilities.max())


def test_prediction_and_probability_are_the_model_softmax_on_each_clip(graph, clips, result):
    probabilities = torch.softmax(graph.forward(clips).output, dim=1)
    assert result.prediction.tolist() == probabilities.argmax(dim=1).tolist()
    torch.testing.assert_close(result.probability, probabilities.max(dim=1).values)
    assert result.target.tolist() == result.prediction.tolist()  # target="auto"


def test_result_shapes_for_a_batch_of_clips(result):
    for name in ("spatiotemporal", "spatial", "temporal"):
        assert getattr(result, name).shape == (2, FRAMES, SIZE, SIZE)
        assert getattr(result, name).dtype == torch.float64
    for name in ("prediction", "probability", "target"):
        assert getattr(result, name).shape == (2,)
    assert result.frozen_predictions.shape == (2, FRAMES)
    assert result.frozen_probabilities.shape == (2, FRAMES)


def test_a_frozen_clip_repeats_its_frame_rather_than_zero_padding(clips):
    frozen = frozen_clips(clips, [(1, 5), (0, 15)])
    for slice_index in range(FRAMES):
        assert torch.equal(frozen[0, :, slice_index], clips[1, :, 5])
        assert torch.equal(frozen[1, :, slice_index], clips[0, :, 15])


# --------------------------------------------------------------------------- no NaN, errors


@pytest.mark.parametrize("normalize", ["maxabs", "sum", "none"])
def test_all_zero_relevance_stays_zero_never_nan(graph, clips, normalize):
    zero_seed = torch.zeros(1, graph.num_classes, dtype=torch.float64)
    result = discriminative(
        graph, clips[:1], output_relevance=zero_seed, normalize=normalize, progress=False
    )
    for name in ("spatiotemporal", "spatial", "temporal"):
        maps = getattr(result, name)
        assert torch.isfinite(maps).all()
        assert not maps.any()


def test_a_single_clip_without_batch_dimension_is_refused_with_a_hint(graph, clips):
    with pytest.raises(ShapeError, match=r"\(B, C, T, H, W\).*unsqueeze\(0\)"):
        discriminative(graph, clips[0], progress=False)


def test_a_clip_of_the_wrong_size_is_refused(graph):
    with pytest.raises(ShapeError, match="input has shape"):
        discriminative(graph, torch.zeros(1, 3, 16, SIZE + 4, SIZE + 4, dtype=torch.float64))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("reduce", "last", "reduce must be one of first, same, mean, sum"),
        ("normalize", "max", "normalize must be one of maxabs, sum, none.*did you mean 'maxabs'"),
        ("batch_size", 0, "batch_size must be a positive integer"),
    ],
)
def test_unknown_options_are_refused_before_any_computation(graph, clips, option, value, message):
    with pytest.raises(RelgraphError, match=message):
        discriminative(graph, clips, **{option: value})


# --------------------------------------------------------------------------- progress


def test_progress_true_shows_a_bar_on_stderr(graph, clips, capsys):
    discriminative(graph, clips[:1], batch_size=4, progress=True)
    captured = capsys.readouterr()
    assert "frozen clips" in captured.err
    assert captured.out == ""


def test_progress_false_and_the_default_off_a_terminal_print_nothing(graph, clips, capsys):
    discriminative(graph, clips[:1], batch_size=4, progress=False)
    discriminative(graph, clips[:1], batch_size=4)  # pytest's stderr is not a terminal
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
